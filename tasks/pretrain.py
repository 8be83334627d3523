"""Prefect task: pretrain the base policy on the ingested corpus (cached per corpus and config).

The model directory is `<data_dir>/models/<arch>-<key>`, where the key hashes the model and
pretraining configs and the train/eval texts: the same inputs find the finished directory
and skip training (idempotent and cheap on every rerun); a changed corpus or config trains
a new one. The directory appears atomically, so a crash never leaves a half-written model
that a later run would take as finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from prefect import task

MARKER = "pretrain.json"


def _logger():
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("gae.pretrain")


# Settings that do not change the finished model: a change must not cost a retrain.
NOT_IN_KEY = ("checkpoint_interval",)


def model_key(model_cfg: dict, pretrain_cfg: dict, train_texts: list[str], eval_texts: list[str]) -> str:
    h = hashlib.sha256()
    pretrain_cfg = {k: v for k, v in pretrain_cfg.items() if k not in NOT_IN_KEY}
    h.update(json.dumps({"model": model_cfg, "pretrain": pretrain_cfg}, sort_keys=True).encode())
    if model_cfg.get("arch") == "hf" and model_cfg.get("hf_path"):
        # the checkpoint's files, not only its path: replacing a checkpoint in place trains anew
        root = Path(model_cfg["hf_path"]).expanduser()
        for f in sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []:
            st = f.stat()
            h.update(f"\x1d{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    for split, texts in (("train", train_texts), ("eval", eval_texts)):
        h.update(f"\x1e{split}:{len(texts)}".encode())
        for t in texts:
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\x1f")
    return h.hexdigest()[:16]


@task(name="pretrain")
def pretrain_task(
    data_dir: str, model_cfg: dict, pretrain_cfg: dict, *, device: str = "auto", corpus: str | None = None
) -> dict:
    """Pretrain on the corpus's train split (eval split for perplexity); return paths and metrics.

    model_cfg / pretrain_cfg: a `gae.models.ModelConfig` / `gae.pretrain.PretrainConfig` as dicts.
    arch=hf takes its tokenizer from `model_cfg["hf_path"]`. Returns {"model_dir", "tokenizer"
    (path of tokenizer.json), "model_key", "cached", "eval_ppl", "unigram_ppl", "steps", "seconds"}.
    """
    from gae import db
    from gae.fsutil import atomic_dir
    from gae.models import ModelConfig
    from gae.paths import DataDir
    from gae.pretrain import PretrainConfig, pretrain
    from gae.progress import Progress, pretrain_progress

    mcfg = ModelConfig.model_validate(model_cfg)
    pcfg = PretrainConfig.model_validate(pretrain_cfg)
    dd = DataDir.resolve(data_dir).ensure()
    con = db.connect(dd, read_only=True)
    try:
        # corpus: the run's own corpus (an id from the ingest task), not every corpus ever ingested here
        train_texts = db.corpus_texts(con, split="train", corpus=corpus)
        eval_texts = db.corpus_texts(con, split="eval", corpus=corpus)
    finally:
        con.close()
    if not train_texts:
        raise ValueError(f"pretrain: the corpus in {dd.db} has no train documents; ingest one first")
    key = model_key(mcfg.model_dump(), pcfg.model_dump(), train_texts, eval_texts)
    out = dd.models / f"{mcfg.arch}-{key}"
    log = _logger()
    cached = (out / MARKER).exists() and (out / "model.safetensors").exists()
    if cached:
        result = json.loads((out / MARKER).read_text())["result"]
        log.info(
            "pretrain: reusing %s (eval ppl %.1f, unigram %.1f)",
            out,
            result["eval_ppl"],
            result["unigram_ppl"],
        )
    else:
        log.info("pretrain: %d train / %d eval documents -> %s", len(train_texts), len(eval_texts), out)
        with atomic_dir(out) as tmp, Progress("pretrain", unit="steps", tty=False, emit=log.info) as bar:
            res = pretrain(
                train_texts, eval_texts, tokenizer_path=mcfg.hf_path if mcfg.arch == "hf" else None,
                model_cfg=mcfg, cfg=pcfg, out_dir=tmp, device=device, progress=pretrain_progress(bar),
            )  # fmt: skip
        result = res.model_dump()
        log.info(
            "pretrain: eval ppl %.1f vs unigram %.1f after %d steps in %.1f s",
            res.eval_ppl, res.unigram_ppl, res.steps, res.seconds,
        )  # fmt: skip
    return {
        "model_dir": str(out),
        "tokenizer": str(Path(out) / "tokenizer.json"),
        "model_key": key,
        "cached": cached,
        **{k: result[k] for k in ("eval_ppl", "unigram_ppl", "initial_eval_ppl", "steps", "seconds")},
    }

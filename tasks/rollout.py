"""Prefect task: sample a rollout batch from the policy and save it under `out_dir`.

Prompts come from DuckDB (a seeded sample of a split, or explicit prompt ids) or from a
JSON/JSON-lines file. Idempotent: the batch is a deterministic function of its inputs
(per-row seeds), and a batch already saved for the same inputs is reused on resume.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task


def _read_prompts_file(path: str) -> list[dict]:
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        rows = json.loads(text)
    else:
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: not a JSON object ({e.msg})") from e
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "prompt_id" not in r or "prompt" not in r:
            raise ValueError(f"{path}: prompt {i} needs 'prompt_id' and 'prompt'")
    return rows


def _fetch_prompts(
    data_dir: str, *, split: str, n_prompts: int | None, seed: int, prompt_ids, corpus: str | None = None
) -> list[dict]:
    from gae import db

    con = db.connect(data_dir, read_only=True)
    try:
        if prompt_ids is None:
            return db.fetch_prompts(con, split=split, limit=n_prompts, seed=seed, corpus=corpus)
        rows = con.execute(
            "select prompt_id, prompt, reference from prompts where list_contains($ids, prompt_id) order by prompt_id",
            {"ids": [str(i) for i in prompt_ids]},
        ).fetchall()
    finally:
        con.close()
    found = {r[0] for r in rows}
    missing = [i for i in prompt_ids if str(i) not in found]
    if missing:
        raise ValueError(f"rollout: prompt ids not in the prompts table: {missing[:5]}")
    by_id = {r[0]: {"prompt_id": r[0], "prompt": r[1], "reference": r[2]} for r in rows}
    return [by_id[str(i)] for i in prompt_ids]


@task(name="rollout")
def rollout_task(
    data_dir: str | None,
    policy_dir: str,
    ref_dir: str,
    tokenizer_path: str,
    rollout_cfg: dict,
    *,
    out_dir: str,
    n_prompts: int | None = None,
    seed: int = 0,
    split: str = "train",
    prompt_ids: list[str] | None = None,
    prompts_path: str | None = None,
    device: str = "auto",
    corpus: str | None = None,
) -> str:
    """Generate rollouts and save a `gae.batch.RolloutBatch` to `out_dir`; return `out_dir`.

    Prompts: `prompts_path` (JSON list or JSON lines of {prompt_id, prompt, reference}), else
    `prompt_ids` from DuckDB, else a sample of `n_prompts` from `split` seeded by `seed`.
    `seed` also seeds sampling (it replaces rollout_cfg["seed"]), so an iteration's seed
    decides both which prompts and which samples. `corpus` (an id from the ingest task) limits
    the sample to that corpus's prompts.
    """
    from gae.device import resolve_device
    from gae.models import load_model
    from gae.rollout import RolloutConfig, generate_rollouts
    from gae.tokenizer import load_tokenizer

    cfg = RolloutConfig.model_validate({**rollout_cfg, "seed": seed})
    prompts = load_prompts(data_dir, n_prompts, seed, split, prompt_ids, prompts_path, corpus)
    key = batch_key(policy_dir, ref_dir, tokenizer_path, cfg, prompts)
    out = Path(out_dir)
    if saved_batch(out, key):
        return str(out)
    dev = resolve_device(device)
    policy = load_model(policy_dir, device=dev)
    ref = policy if Path(ref_dir).resolve() == Path(policy_dir).resolve() else load_model(ref_dir, device=dev)
    tok = load_tokenizer(tokenizer_path)
    batch = generate_rollouts(policy, ref, tok, prompts, cfg, device=dev)
    batch.meta.update({"task_key": key, "split": split})
    # batch.json is written last, so a batch with the key is complete
    (out / "batch.json").unlink(missing_ok=True)
    return str(batch.save(out))


def load_prompts(data_dir, n_prompts, seed, split, prompt_ids, prompts_path, corpus) -> list[dict]:
    """The rollout's prompts (see `rollout_task`); an empty selection is an error."""
    if prompts_path is not None:
        prompts = _read_prompts_file(prompts_path)[:n_prompts]
    else:
        if data_dir is None:
            raise ValueError("rollout: give data_dir (DuckDB prompts) or prompts_path")
        prompts = _fetch_prompts(
            data_dir, split=split, n_prompts=n_prompts, seed=seed, prompt_ids=prompt_ids, corpus=corpus
        )
    if not prompts:
        raise ValueError(f"rollout: no prompts found (split={split!r}, n_prompts={n_prompts})")
    return prompts


def batch_key(policy_dir, ref_dir, tokenizer_path, cfg, prompts: list[dict]) -> dict:
    """What decides a batch's contents; saved in its metadata, so a rerun reuses a batch made
    from the same inputs (by either executor: they give the same batch)."""
    return {
        "policy_dir": str(policy_dir),
        "ref_dir": str(ref_dir),
        "tokenizer": str(tokenizer_path),
        "rollout": cfg.model_dump(),
        "prompt_ids": [str(p["prompt_id"]) for p in prompts],
    }


def saved_batch(out: Path, key: dict) -> bool:
    """Whether `out` holds a complete batch saved with `key` (batch.json is written last)."""
    done = (out / "batch.json").exists() and (out / "batch.safetensors").exists()
    return done and json.loads((out / "batch.json").read_text()).get("meta", {}).get("task_key") == key

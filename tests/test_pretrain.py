"""Pretraining: loss goes down on a small structured corpus, outputs load back, schedule and baseline math."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from gae.models import ModelConfig, load_model
from gae.pretrain import PretrainConfig, lr_at, pretrain, unigram_nll
from gae.rollout import generate_text
from gae.tokenizer import load_tokenizer
from tests.test_models import one_torch_thread  # noqa: F401 (autouse fixture)

ANIMALS = ["cat", "dog", "fox", "owl", "hen"]
PLACES = ["mat", "log", "box", "hill", "bed"]


def corpus(n: int, seed: int) -> list[str]:
    """Sentences with learnable structure (fixed frame, animal-place pairs), so a model beats unigram fast."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        i = rng.randrange(5)
        out.append(" ".join(f"the {ANIMALS[i]} sat on the {PLACES[i]}." for _ in range(rng.randint(2, 4))))
    return out


def fast_cfg(**kw) -> PretrainConfig:
    base = dict(
        vocab_size=300, max_steps=40, batch_size=8, seq_len=32, lr=3e-3, warmup_steps=5, eval_interval=20,
        eval_tokens=1024, max_seconds=None,
    )  # fmt: skip
    return PretrainConfig(**{**base, **kw})


@pytest.mark.parametrize("arch", ["gpt", "gru"])
def test_pretraining_lowers_eval_loss_and_writes_loadable_model(tmp_path, arch):
    model_cfg = ModelConfig.preset("tiny", arch=arch, n_layer=1)
    res = pretrain(
        corpus(200, 0), corpus(30, 1), tokenizer_path=None, model_cfg=model_cfg, cfg=fast_cfg(), out_dir=tmp_path,
        device="cpu",
    )  # fmt: skip
    assert res.steps == 40
    assert res.eval_ppl < 0.5 * res.initial_eval_ppl
    assert res.eval_ppl < res.unigram_ppl
    assert [h["step"] for h in res.history] == [0, 20, 40]
    json.dumps(res.model_dump())  # JSON-able
    # out_dir holds everything a rollout needs
    tok = load_tokenizer(tmp_path)
    model = load_model(tmp_path)
    assert model.cfg.vocab_size == tok.vocab_size <= 300  # BPE stops early when merges run out
    assert json.loads((tmp_path / "pretrain.json").read_text())["result"]["steps"] == 40
    assert json.loads((tmp_path / "config.json").read_text())["extra"]["pretrain"]["steps"] == 40
    (text,) = generate_text(model, tok, ["the"], max_new_tokens=8, temperature=0.0)
    assert isinstance(text, str) and text


def test_reuses_given_tokenizer_checkpoints_and_separate_critic(tmp_path):
    first = pretrain(
        corpus(60, 0), corpus(10, 1), tokenizer_path=None, model_cfg=ModelConfig.preset("tiny", n_layer=1),
        cfg=fast_cfg(max_steps=4, eval_interval=4), out_dir=tmp_path / "a", device="cpu",
    )  # fmt: skip
    assert first.steps == 4
    pretrain(
        corpus(60, 0), [], tokenizer_path=tmp_path / "a" / "tokenizer.json",
        model_cfg=ModelConfig.preset("tiny", n_layer=1, critic="separate"),
        cfg=fast_cfg(max_steps=4, checkpoint_interval=2), out_dir=tmp_path / "b", device="cpu",
    )  # fmt: skip
    assert (tmp_path / "b" / "tokenizer.json").read_text() == (tmp_path / "a" / "tokenizer.json").read_text()
    assert (tmp_path / "b" / "checkpoint" / "model.safetensors").exists()
    model = load_model(tmp_path / "b")
    for pa, pc in zip(model.actor.parameters(), model.critic_trunk.parameters(), strict=True):
        assert torch.equal(pa, pc)  # the critic trunk starts from the pretrained policy


def test_lr_schedule_hand_computed():
    cfg = PretrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=4, max_steps=14)
    assert lr_at(0, cfg) == 0.25 and lr_at(3, cfg) == 1.0  # warm-up: (step + 1) / 4
    assert lr_at(4, cfg) == 1.0  # cosine starts at the peak
    assert math.isclose(lr_at(9, cfg), 0.55)  # half way: 0.1 + 0.9 * 0.5
    assert math.isclose(lr_at(14, cfg), 0.1) and math.isclose(lr_at(50, cfg), 0.1)
    # the time guard: half the time gone at step 5 -> the cosine is half way, like step 9
    assert math.isclose(lr_at(5, cfg, time_frac=0.5), 0.55)
    assert lr_at(9, cfg, time_frac=0.1) == lr_at(9, cfg)  # the step fraction is larger


def test_unigram_nll_hand_computed():
    # train counts over V=3: [2, 1, 0] + 1 smoothing -> [3, 2, 1] / 6; targets [0, 1]
    # nll = -(log(1/2) + log(1/3)) / 2
    got = unigram_nll(torch.tensor([0, 0, 1]), torch.tensor([0, 1]), 3)
    assert math.isclose(got, -(math.log(1 / 2) + math.log(1 / 3)) / 2)


def test_presets_and_errors(tmp_path):
    assert PretrainConfig.preset("small") == PretrainConfig()
    assert PretrainConfig.preset("tiny").max_steps < PretrainConfig().max_steps
    with pytest.raises(ValueError, match="unknown pretrain preset"):
        PretrainConfig.preset("xl")
    with pytest.raises(ValueError, match="no train texts"):
        pretrain(
            [],
            [],
            tokenizer_path=None,
            model_cfg=ModelConfig.preset("tiny"),
            cfg=fast_cfg(),
            out_dir=tmp_path,
        )


def test_pretrain_task_from_duckdb_is_cached(tmp_path):
    """The Prefect task reads the ingested corpus from DuckDB, writes models/<arch>-<key>/, and a
    rerun with the same corpus and config reuses it."""
    from prefect.logging import disable_run_logger

    from gae.ingest import ingest
    from tasks.pretrain import pretrain_task

    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus(80, 0)))
    ingest([str(src)], data_dir=tmp_path / "data")
    model_cfg = ModelConfig.preset("tiny", n_layer=1).model_dump()
    cfg = fast_cfg(max_steps=5, eval_interval=5).model_dump()
    with disable_run_logger():
        first = pretrain_task.fn(str(tmp_path / "data"), model_cfg, cfg, device="cpu")
        again = pretrain_task.fn(str(tmp_path / "data"), model_cfg, cfg, device="cpu")
    assert not first["cached"] and again["cached"]
    assert first["model_dir"] == again["model_dir"] and first["eval_ppl"] == again["eval_ppl"]
    assert first["model_dir"].startswith(str(tmp_path / "data" / "models" / "gpt-"))
    load_model(first["model_dir"])
    load_tokenizer(first["tokenizer"])


def test_pretrain_cache_key_follows_what_changes_the_model(tmp_path):
    """checkpoint_interval does not change the finished model (no retrain); the corpus, the
    config and, for a local HF checkpoint, its files do (a checkpoint replaced in place)."""
    import os

    from tasks.pretrain import model_key

    m, p = {"arch": "gpt", "n_layer": 2}, {"steps": 10, "checkpoint_interval": 0}
    base = model_key(m, p, ["a b"], ["c"])
    assert base == model_key(m, {**p, "checkpoint_interval": 5}, ["a b"], ["c"])
    assert base != model_key(m, {**p, "steps": 11}, ["a b"], ["c"])
    assert base != model_key(m, p, ["a b", "d"], ["c"])
    assert base != model_key(m, p, ["a b"], [])
    hf = tmp_path / "ckpt"
    hf.mkdir()
    (hf / "model.safetensors").write_bytes(b"x" * 10)
    mh = {"arch": "hf", "hf_path": str(hf)}
    k1 = model_key(mh, p, ["a"], [])
    assert k1 == model_key(mh, p, ["a"], [])
    (hf / "model.safetensors").write_bytes(b"y" * 11)
    os.utime(hf / "model.safetensors", ns=(1, 2))
    assert model_key(mh, p, ["a"], []) != k1

"""Host copies and the in-process handoff between tasks (gae.device.to_host, gae.handoff).

On the CPU nothing is copied, but every tensor the iteration sends to the host is still
handed to `to_host` and recorded by `host_copy_log`: the test below checks that each (B, T)
tensor of an iteration is sent exactly once, through the real task functions. On CUDA the
profiler counts the real device-to-host copies (tests/test_cuda.py, bench/gpu.py).
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file, save_file

from gae import handoff
from gae.device import host_copy_log, to_host


@pytest.fixture(autouse=True)
def _empty_handoff():
    handoff.clear()
    yield
    handoff.clear()


def test_to_host_returns_equal_contiguous_tensors_and_logs_them():
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()  # non-contiguous view
    m = torch.tensor([[True, False], [False, True]])
    with host_copy_log() as outer:
        with host_copy_log() as inner:
            out = to_host({"x": x, "m": m}).wait()
        to_host({"y": torch.zeros(5, dtype=torch.int64)}).wait()
    assert torch.equal(out["x"], x) and out["x"].is_contiguous() and torch.equal(out["m"], m)
    assert inner == [
        {"name": "x", "shape": (4, 3), "dtype": "float32", "bytes": 48, "device": "cpu"},
        {"name": "m", "shape": (2, 2), "dtype": "bool", "bytes": 4, "device": "cpu"},
    ]
    assert [e["name"] for e in outer] == ["x", "m", "y"] and outer[2]["bytes"] == 40
    to_host({"z": x}).wait()  # outside any log: nothing recorded anywhere
    assert len(outer) == 3


def test_handoff_returns_the_written_tensors_until_the_file_changes(tmp_path):
    path = tmp_path / "a.safetensors"
    t = {"a": torch.randn(3, 4)}
    save_file(t, str(path))
    handoff.put(path, t)
    got = handoff.get(path, "cpu")
    assert got is not None and got["a"] is t["a"]
    got["b"] = torch.zeros(1)  # the caller's dict is a copy: the entry keeps its own keys
    assert set(handoff.get(path, "cpu")) == {"a"}
    # same path through another spelling resolves to the same entry
    assert handoff.get(tmp_path / "." / "a.safetensors", "cpu") is not None
    # asked for another device: not these tensors
    assert handoff.get(path, "meta") is None
    # the file rewritten (by a rerun, by another process): read the file, forget the entry
    save_file({"a": torch.randn(3, 4)}, str(path) + ".tmp")
    os.replace(str(path) + ".tmp", path)
    assert handoff.get(path, "cpu") is None
    # gone file
    handoff.put(path, t)
    path.unlink()
    assert handoff.get(path, "cpu") is None
    with pytest.raises(FileNotFoundError, match="a.safetensors"):
        handoff.put(path, t)


def test_handoff_keeps_only_the_latest_entries(tmp_path):
    paths = []
    for i in range(handoff.MAX_ENTRIES + 2):
        p = tmp_path / f"{i}.st"
        p.write_bytes(b"x")
        handoff.put(p, {"i": torch.tensor(i)})
        paths.append(p)
    assert handoff.get(paths[0], "cpu") is None and handoff.get(paths[1], "cpu") is None
    assert all(handoff.get(p, "cpu") is not None for p in paths[2:])
    assert not handoff.enabled_for("cpu") and handoff.enabled_for("cuda") and handoff.enabled_for("meta")


# The (B, T) tensors an iteration writes (the per-token store's columns), each sent to the host once.
STORE_COPIES = (
    *("response_tokens", "action_mask", "logprobs", "ref_logprobs", "values"),  # batch.safetensors
    *("token_rewards", "kl", "advantages", "returns"),  # advantages.safetensors
    "train_logprobs",  # the trainer's log-probs, for the store's train_logprob column
)


def task_chain(work, policy_dir: str, tokenizer: str, prompts_path: str, run_id: str, device: str) -> str:
    """rollout -> rewards -> advantages -> PPO through the task functions; returns the batch dir."""
    from prefect.logging import disable_run_logger

    from tasks.advantages import compute_advantages
    from tasks.rewards import score_rollouts
    from tasks.rollout import rollout_task
    from tasks.train import train_iteration

    with disable_run_logger():
        batch_dir = rollout_task.fn(
            *(None, policy_dir, policy_dir, tokenizer, {"n_samples": 2, "max_new_tokens": 16}),
            out_dir=str(work / run_id / "batch"),
            prompts_path=prompts_path,
            device=device,
        )
        scores = score_rollouts.fn(batch_dir, {"components": [{"name": "unigram_f1"}]})
        adv = compute_advantages.fn(batch_dir, scores, {"estimator": "gae"}, {}, kl_coef=0.05, device=device)
        train_iteration.fn(
            *(str(work / "data"), run_id, 0, policy_dir, batch_dir, adv["path"]),
            *({"epochs": 1, "minibatches": 2}, {}),
            kl_coef=0.05,
            device=device,
        )
    return batch_dir


def test_an_iteration_sends_each_bt_tensor_to_the_host_once(tmp_path):
    """Every (B, T) tensor of an iteration crosses to the host exactly once, and what was saved
    is what was generated."""
    from gae.batch import RolloutBatch
    from gae.models import ModelConfig, build_model, save_model
    from gae.tokenizer import load_tokenizer, train_tokenizer

    texts = ["the quick brown fox jumps over the lazy dog.", "莫笑农家腊酒浑，丰年留客足鸡豚。"] * 20
    tok = load_tokenizer(train_tokenizer(texts, vocab_size=300, out_dir=tmp_path / "tok"))
    torch.manual_seed(0)
    save_model(build_model(ModelConfig.preset("tiny"), tok.vocab_size), tmp_path / "policy")
    tok.save(tmp_path / "policy")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt_id": f"p{i}", "prompt": texts[i][:12], "reference": texts[i]}) + "\n"
            for i in range(4)
        )
    )
    pol, tk = str(tmp_path / "policy"), str(tmp_path / "policy" / "tokenizer.json")
    with host_copy_log() as log:
        batch_dir = task_chain(tmp_path, pol, tk, str(prompts), "r", "cpu")
    batch = RolloutBatch.load(batch_dir)
    B, T = batch.action_mask.shape
    bt = Counter(e["name"] for e in log if e["shape"] == (B, T))
    assert bt == Counter(STORE_COPIES), bt
    # the tokens copied early (to decode the text) are the ones saved, not a stale copy
    ids = [
        [t for t, m in zip(r, mk, strict=True) if m and t != tok.eos_id]
        for r, mk in zip(batch.response_tokens.tolist(), batch.action_mask.tolist(), strict=True)
    ]
    assert batch.responses == [tok.decode(r) for r in ids]
    lp = load_file(str(tmp_path / "data" / "runs" / "r" / "iter-00000" / "train_logprobs.safetensors"))
    assert lp["train_logprobs"].shape == (B, T)

"""Issue 14 on CUDA: the static decode step replayed as a CUDA graph, the host syncs of a decode,
rollout batch sizing from free memory, and chunked log-probs' memory.

All marked `cuda` (skipped with a reason on machines without a GPU, tests/conftest.py). The
CPU halves of the same checks are tests/test_decode.py and tests/test_scoring.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from gae.decode import _DECODERS, release_decoders
from gae.models import ModelConfig, build_model, score_responses
from gae.rollout import RolloutConfig, generate_rollouts, sample_batch
from tests.test_decode import EOS, PAD, STATIC_ARCHS, V, prompt_rows, static_arch_model

pytestmark = pytest.mark.cuda
DEV = torch.device("cuda")
SAMPLINGS = {
    "greedy": {"temperature": 0.0, "top_k": 0, "top_p": 1.0},
    "t1": {"temperature": 1.0, "top_k": 0, "top_p": 1.0},
    "topk-topp": {"temperature": 1.3, "top_k": 40, "top_p": 0.9},
}


@pytest.fixture(scope="module", params=STATIC_ARCHS)
def model(request, tmp_path_factory):
    return static_arch_model(request.param, tmp_path_factory, device="cuda")


def run(model, rows, seeds, *, decode, max_new_tokens=24, bf16=False, **kw):
    args = {**SAMPLINGS["t1"], **kw}
    return sample_batch(
        model, rows, seeds, max_new_tokens=max_new_tokens, eos_id=EOS, pad_id=PAD, device=DEV,
        decode=decode, bf16=bf16, **args,
    )  # fmt: skip


@pytest.mark.parametrize("sampling", list(SAMPLINGS))
def test_graph_replay_equals_dynamic(model, sampling):
    release_decoders(model)
    rows, seeds = prompt_rows(11, seed=1), list(range(100, 111))
    dyn = run(model, rows, seeds, decode="dynamic", **SAMPLINGS[sampling])
    sta = run(model, rows, seeds, decode="static", **SAMPLINGS[sampling])
    assert torch.equal(sta["response_tokens"], dyn["response_tokens"])
    assert torch.equal(sta["action_mask"], dyn["action_mask"])
    assert sta["finish_reasons"] == dyn["finish_reasons"]
    torch.testing.assert_close(sta["logprobs"], dyn["logprobs"], atol=1e-4, rtol=0)
    (dec,) = _DECODERS[model].values()
    assert dec.rows == 16 and dec.graph is not None  # the steps after the warm-up were replays


@pytest.mark.parametrize("bf16", [False, True])
def test_graph_replay_is_bit_identical_to_the_eager_static_loop(model, bf16):
    """The graph replays the very kernels the eager static loop launches (bf16 autocast too,
    whose weight-cast cache is off during the capture)."""
    rows, seeds = prompt_rows(6, seed=2), [1, 2, 3, 4, 5, 6]
    eager = run(model, rows, seeds, decode="static", bf16=bf16, cuda_graph=False)
    graph = run(model, rows, seeds, decode="static", bf16=bf16)
    again = run(model, rows, seeds, decode="static", bf16=bf16)  # the kept graph, replayed again
    for out in (graph, again):
        assert torch.equal(out["response_tokens"], eager["response_tokens"])
        assert torch.equal(out["logprobs"], eager["logprobs"])
        assert out["finish_reasons"] == eager["finish_reasons"]


def test_graph_reused_across_prompt_lengths_and_sees_weight_updates(model):
    release_decoders(model)
    for n, seed, max_len in [(9, 3, 14), (12, 4, 6)]:  # one bucket: 16 rows x 64 columns
        rows, seeds = prompt_rows(n, seed, max_len), list(range(n))
        dyn, sta = run(model, rows, seeds, decode="dynamic"), run(model, rows, seeds, decode="static")
        assert torch.equal(sta["response_tokens"], dyn["response_tokens"])
    assert len(_DECODERS[model]) == 1
    saved = [p.detach().clone() for p in model.parameters()]
    try:
        with torch.no_grad():  # an optimizer step writes in place: the captured graph reads the new weights
            for p in model.actor.parameters():
                p.mul_(1.5)
        rows, seeds = prompt_rows(10, 5), list(range(10))
        dyn, sta = run(model, rows, seeds, decode="dynamic"), run(model, rows, seeds, decode="static")
        assert torch.equal(sta["response_tokens"], dyn["response_tokens"])
        torch.testing.assert_close(sta["logprobs"], dyn["logprobs"], atol=1e-4, rtol=0)
        assert len(_DECODERS[model]) == 1
    finally:
        with torch.no_grad():
            for p, s in zip(model.parameters(), saved, strict=True):
                p.copy_(s)


def _host_syncs(fn, tmp_path) -> dict:
    """Device-to-host copies, synchronize calls and graph launches while `fn` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    names = [e.get("name", "") for e in json.loads(path.read_text())["traceEvents"]]
    return {
        "dtoh": sum(n.startswith("Memcpy DtoH") for n in names),
        "sync": sum(
            n in ("cudaStreamSynchronize", "cudaEventSynchronize", "cudaDeviceSynchronize") for n in names
        ),
        "graph": sum(n == "cudaGraphLaunch" for n in names),
    }


def test_no_host_sync_per_step(model, tmp_path):
    """64 steps, no row stops (EOS id -1): the dynamic loop reads a count back every step; the
    static one reads its 'all finished' flag every `check_every` steps (7 copies, 6 waits) plus
    a fixed handful per call (prompts and uniforms to the device, the lengths and finish reasons
    back, the test's own synchronize)."""
    rows, seeds = prompt_rows(8, seed=6), list(range(8))
    kw = dict(max_new_tokens=64, eos_id=-1, pad_id=PAD, device=DEV, **SAMPLINGS["t1"])
    sample_batch(model, rows, seeds, decode="static", check_every=8, **kw)  # capture outside the count
    dyn = _host_syncs(lambda: sample_batch(model, rows, seeds, decode="dynamic", **kw), tmp_path)
    sta = _host_syncs(
        lambda: sample_batch(model, rows, seeds, decode="static", check_every=8, **kw), tmp_path
    )
    assert dyn["dtoh"] >= 63 and dyn["sync"] >= 63, dyn
    assert sta["graph"] == 63  # one launch per step after the prefill (the graph exists: no warm-up)
    assert sta["dtoh"] <= 64 // 8 + 6, sta
    assert sta["sync"] <= 64 // 8 + 8, sta


def test_generate_rollouts_defaults_on_cuda(tmp_path):
    """decode=auto is static on CUDA; batch_size=auto is sized from free memory (far above 64
    for a tiny model), capped by max_batch_size."""
    from gae.tokenizer import load_tokenizer, train_tokenizer

    texts = ["the quick brown fox", "to be or not to be", "hello world and more words"] * 10
    tok = load_tokenizer(train_tokenizer(texts, vocab_size=V, out_dir=tmp_path / "tok"))
    torch.manual_seed(0)
    policy = build_model(ModelConfig.preset("tiny"), len(tok)).to(DEV)
    prompts = [{"prompt_id": f"p{i}", "prompt": texts[i % 3]} for i in range(50)]
    cfg = RolloutConfig(n_samples=4, max_new_tokens=12, max_batch_size=128)
    b = generate_rollouts(policy, policy, tok, prompts, cfg, device=DEV)
    assert b.meta["decode"] == "static" and b.meta["batch_size"] == 128
    ref = generate_rollouts(
        policy, policy, tok, prompts, cfg.model_copy(update={"decode": "dynamic"}), device=DEV
    )
    assert torch.equal(b.response_tokens, ref.response_tokens)
    torch.testing.assert_close(b.logprobs, ref.logprobs)


def test_chunked_logprobs_equal_and_use_less_memory():
    torch.manual_seed(0)
    Vb, B, P, T = 32_000, 4, 16, 256
    model = build_model(ModelConfig.preset("tiny", block_size=512), Vb).to(DEV).eval()
    g = torch.Generator(device=DEV).manual_seed(0)
    args = (
        torch.randint(3, Vb, (B, P), device=DEV, generator=g),
        torch.ones(B, P, dtype=torch.bool, device=DEV),
        torch.randint(3, Vb, (B, T), device=DEV, generator=g),
        torch.ones(B, T, dtype=torch.bool, device=DEV),
    )

    def step(chunk_tokens):
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = score_responses(model, *args, compute_entropy=True, chunk_tokens=chunk_tokens)
        (out.logprobs.mean() - 0.01 * out.entropy.mean() + out.values.pow(2).mean()).backward()
        torch.cuda.synchronize()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return out, grads, torch.cuda.max_memory_allocated() - base

    ref, ref_g, ref_peak = step(0)
    got, got_g, peak = step(4 * 16)  # 16 positions per chunk
    torch.testing.assert_close(got.logprobs, ref.logprobs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.entropy, ref.entropy, atol=1e-4, rtol=1e-4)
    for a, b in zip(got_g, ref_g, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)
    assert peak < 0.4 * ref_peak, (peak, ref_peak)  # (B, T, V) float32 logits alone are 131 MB

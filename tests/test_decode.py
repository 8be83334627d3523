"""Static-cache decoding (gae.decode) against the dynamic loop, and rollout batch sizing.

The static loop runs on CPU exactly as on CUDA, minus the graph capture: same buffers, same
device-side counters, same sampling code. It must draw the same tokens as the dynamic loop
(the reference) for the same seeds, with log-probs equal up to float summation order, for
every arch that has a static cache (gpt; hf: GPT-2 and Qwen2 with grouped-query attention
and rotary positions), greedy and sampled, with top-k/top-p, left-padded prompts of mixed
lengths, and rows that stop at different steps (an EOS-favouring head).
"""

from __future__ import annotations

import pytest
import torch

from gae.decode import (
    _DECODERS,
    batch_bucket,
    cache_bucket,
    decode_row_bytes,
    release_decoders,
    rollout_batch_size,
)
from gae.models import ModelConfig, build_model
from gae.rollout import (
    CPU_BATCH_SIZE,
    RolloutConfig,
    generate_rollouts,
    resolve_batch_size,
    resolve_decode,
    sample_batch,
)
from tests.test_models import hf_tiny_dir, one_torch_thread  # noqa: F401 (autouse fixture)

V = 300
EOS, PAD = 5, 0
ATOL = 1e-5


def qwen2_tiny_dir(tmp_path_factory) -> str:
    transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    d = tmp_path_factory.mktemp("hf-qwen2")
    cfg = transformers.Qwen2Config(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(str(d))  # built locally, never downloaded
    return str(d)


def eos_biased(model, bias: float):
    """Shift the EOS logit of the LM head so rows stop at varied steps."""
    head = model.actor.logits
    shift = torch.zeros(V)
    shift[EOS] = bias
    model.actor.logits = lambda hidden: head(hidden) + shift.to(hidden.device)
    return model


STATIC_ARCHS = ["gpt", "hf-gpt2", "hf-qwen2"]


def static_arch_model(name: str, tmp_path_factory, device: str = "cpu"):
    """A tiny model of each arch with a static cache, its EOS favoured: p(EOS) ~ e^3 / (e^3 + 300)
    ~ 0.06 per step, so rows end anywhere in 1..24 steps, or run to the limit."""
    if name == "gpt":
        cfg = ModelConfig.preset("tiny")
    elif name == "hf-gpt2":
        cfg = ModelConfig(arch="hf", hf_path=hf_tiny_dir(tmp_path_factory))
    else:
        cfg = ModelConfig(arch="hf", hf_path=qwen2_tiny_dir(tmp_path_factory))
    torch.manual_seed(0)
    return eos_biased(build_model(cfg, V).to(device).eval(), 3.0)


@pytest.fixture(scope="module", params=STATIC_ARCHS)
def model(request, tmp_path_factory):
    return static_arch_model(request.param, tmp_path_factory)


def prompt_rows(n: int, seed: int, max_len: int = 14) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, max_len + 1, (n,), generator=g)
    return [torch.randint(6, V, (int(k),), generator=g).tolist() for k in lens]


def both(model, rows, seeds, **kw):
    args = dict(max_new_tokens=24, eos_id=EOS, pad_id=PAD, device="cpu", **kw)
    return (
        sample_batch(model, rows, seeds, decode="dynamic", **args),
        sample_batch(model, rows, seeds, decode="static", **args),
    )


def assert_same(dyn: dict, sta: dict) -> None:
    assert torch.equal(sta["prompt_tokens"], dyn["prompt_tokens"])
    assert torch.equal(sta["response_tokens"], dyn["response_tokens"])
    assert torch.equal(sta["action_mask"], dyn["action_mask"])
    assert sta["finish_reasons"] == dyn["finish_reasons"]
    torch.testing.assert_close(sta["logprobs"], dyn["logprobs"], atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "sampling",
    [
        {"temperature": 0.0, "top_k": 0, "top_p": 1.0},
        {"temperature": 1.0, "top_k": 0, "top_p": 1.0},
        {"temperature": 1.3, "top_k": 40, "top_p": 0.9},
    ],
    ids=["greedy", "t1", "topk-topp"],
)
def test_static_equals_dynamic(model, sampling):
    rows = prompt_rows(11, seed=1)  # 11 rows: 5 padding rows up to the bucket of 16
    dyn, sta = both(model, rows, list(range(100, 111)), **sampling)
    assert_same(dyn, sta)
    lengths = dyn["action_mask"].sum(1)
    if sampling["temperature"] > 0:  # rows finish at different steps
        assert len(set(lengths.tolist())) >= 3 and "eos" in dyn["finish_reasons"]
    if sampling["temperature"] == 1.0:  # ... and some at the limit
        assert "length" in dyn["finish_reasons"]
    assert dyn["prompt_mask"].sum(1).min() < dyn["prompt_tokens"].shape[1]  # really left-padded


@pytest.mark.parametrize("check_every", [1, 3, 50])
def test_check_interval_does_not_change_results(model, check_every):
    """Reading 'all finished' back rarely only adds steps in which every row emits padding."""
    rows = prompt_rows(4, seed=2)
    kw = dict(max_new_tokens=24, temperature=1.0, top_k=0, top_p=1.0, eos_id=EOS, pad_id=PAD, device="cpu")
    dyn = sample_batch(model, rows, [1, 2, 3, 4], decode="dynamic", **kw)
    sta = sample_batch(model, rows, [1, 2, 3, 4], decode="static", check_every=check_every, **kw)
    assert_same(dyn, sta)


def test_static_step_under_bf16_autocast(model):
    """bf16 autocast (CPU's standing in for CUDA's, where the static loop turns it on): a prefill
    and one decode step through the static cache give the dynamic cache's logits up to bf16
    rounding (the GPT's cache keeps float32, as its dynamic cache does; HF's StaticCache takes
    the bf16 of the keys it is first given)."""
    from gae.decode import StaticDecoder

    dyn, _ = both(model, prompt_rows(3, seed=8), [1, 2, 3], temperature=0.0, top_k=0, top_p=1.0)
    ids, mask, nxt = dyn["prompt_tokens"], dyn["prompt_mask"], dyn["response_tokens"][:, :1]
    dec = StaticDecoder(
        model, rows=4, max_len=64, max_new_tokens=4, temperature=0.0, top_k=0, top_p=1.0, eos_id=EOS,
        pad_id=PAD, device=torch.device("cpu"), bf16=False, cuda_graph=False,
    )  # fmt: skip
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cache = model.new_cache(3, 64)
        _, cache = model.decode_step(ids, mask, cache, last_only=True)
        ref, _ = model.decode_step(nxt, torch.cat([mask, torch.ones_like(nxt, dtype=torch.bool)], 1), cache)
        dec._prefill(ids, mask, None)  # samples token 0 (greedy) into dec.cur
        assert torch.equal(dec.cur[:3], nxt)
        dec.key_mask.index_fill_(1, dec.col, True)
        got = model.static_step(dec.cur, dec.pos, dec.key_mask[:, None, None, :], dec.cache)
    torch.testing.assert_close(got[:3].float(), ref[:, -1].float(), atol=0.1, rtol=0.05)


def test_decoder_reused_across_calls_prompt_lengths_and_batch_sizes(model):
    release_decoders(model)
    kw = dict(temperature=1.0, top_k=0, top_p=1.0)
    for n, seed, max_len in [(9, 3, 14), (12, 4, 6), (16, 5, 20)]:  # one bucket (16 rows, 64 columns)
        dyn, sta = both(model, prompt_rows(n, seed, max_len), list(range(n)), **kw)
        assert_same(dyn, sta)
    assert len(_DECODERS[model]) == 1
    both(model, prompt_rows(3, 6), [0, 1, 2], **kw)  # bucket of 4 rows: a second decoder
    assert len(_DECODERS[model]) == 2
    assert release_decoders(model) == 2 and model not in _DECODERS


def test_weights_changed_in_place_are_seen(model):
    rows, seeds = prompt_rows(5, seed=7), [9, 8, 7, 6, 5]
    kw = dict(temperature=1.0, top_k=0, top_p=1.0)
    both(model, rows, seeds, **kw)
    saved = [p.detach().clone() for p in model.parameters()]
    try:
        with torch.no_grad():
            for p in model.actor.parameters():
                p.mul_(1.5)
        dyn, sta = both(model, rows, seeds, **kw)
        assert_same(dyn, sta)
    finally:
        with torch.no_grad():
            for p, s in zip(model.parameters(), saved, strict=True):
                p.copy_(s)


def test_generate_rollouts_static_equals_dynamic(model, tmp_path):
    from gae.tokenizer import load_tokenizer, train_tokenizer

    texts = ["the quick brown fox", "to be or not to be", "hello world and more words"] * 10
    tok = load_tokenizer(train_tokenizer(texts, vocab_size=V, out_dir=tmp_path / "tok"))
    prompts = [{"prompt_id": f"p{i}", "prompt": t} for i, t in enumerate(texts[:3])]
    cfg = dict(n_samples=3, max_new_tokens=10, seed=3, recompute_logprobs=False)
    a = generate_rollouts(model, model, tok, prompts, RolloutConfig(decode="dynamic", **cfg), device="cpu")
    b = generate_rollouts(model, model, tok, prompts, RolloutConfig(decode="static", **cfg), device="cpu")
    assert torch.equal(a.response_tokens, b.response_tokens) and a.responses == b.responses
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=ATOL, rtol=0)
    assert (a.meta["decode"], b.meta["decode"]) == ("dynamic", "static")
    assert a.meta["batch_size"] == CPU_BATCH_SIZE


def test_decode_choice():
    torch.manual_seed(0)
    gpt = build_model(ModelConfig.preset("tiny"), V)
    gru = build_model(ModelConfig.preset("tiny", arch="gru"), V)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # a choice only: nothing runs on CUDA
    assert resolve_decode(gpt, "auto", cuda) == "static"
    assert resolve_decode(gpt, "auto", cpu) == "dynamic"
    assert resolve_decode(gpt, "static", cpu) == "static"
    assert resolve_decode(gru, "auto", cuda) == "dynamic"
    with pytest.raises(ValueError, match="arch 'gru' has no static cache"):
        resolve_decode(gru, "static", cpu)
    with pytest.raises(ValueError, match="choose auto, static or dynamic"):
        resolve_decode(gpt, "graph", cpu)
    with pytest.raises(ValueError, match="exceeds|needs 130 positions"):
        sample_batch(
            gpt, [[1] * 10], [0], max_new_tokens=120, temperature=1.0, top_k=0, top_p=1.0,
            eos_id=EOS, pad_id=PAD, device="cpu", decode="static",
        )  # fmt: skip


def test_buckets():
    assert [batch_bucket(n) for n in (1, 2, 3, 5, 9, 16, 17, 33, 64, 65, 250)] == [
        1, 2, 4, 8, 16, 16, 32, 48, 64, 80, 256,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="at least one row"):
        batch_bucket(0)
    assert cache_bucket(70, None) == 128
    assert cache_bucket(70, 100) == 100  # capped at the block size
    assert cache_bucket(100, 100) == 100
    assert cache_bucket(64, 256) == 64


# ------------------------------------------------------------------ batch sizing


def test_rollout_batch_size_from_free_memory():
    GiB, MiB = 1 << 30, 1 << 20
    # 0.5B Qwen2 shape, bf16: K/V = 2 x 24 layers x 2 KV heads x 64 x 2 bytes per position
    row = decode_row_bytes(
        kv_bytes_per_position=2 * 24 * 2 * 64 * 2, prompt_len=128, max_new_tokens=256,
        vocab_size=151_936, hidden_size=896,
    )  # fmt: skip
    kv, sampling, act = 12_288 * 384, 151_936 * 56, 384 * 896 * 64
    assert row == kv + sampling + act  # 4.7 MB + 8.5 MB + 22.0 MB
    # an H200 with 120 GiB free: far more than batch 64, capped by max_rows
    assert rollout_batch_size(120 * GiB, row, fraction=0.8, max_rows=1024) == 1024
    assert (
        rollout_batch_size(120 * GiB, row, fraction=0.8, max_rows=4096) == 2912
    )  # 0.8 x 120 GiB / row = 2924.5
    # 10 GiB free: 0.8 x 10 GiB / 35.2 MB = 244 rows -> 240 (a multiple of 16)
    assert rollout_batch_size(10 * GiB, row, fraction=0.8, max_rows=1024) == 240
    # little memory: powers of two below 16, never 0
    assert rollout_batch_size(200 * MiB, row, fraction=0.8, max_rows=1024) == 4
    assert rollout_batch_size(1 * MiB, row, fraction=0.8, max_rows=1024) == 1
    assert rollout_batch_size(-5, row, fraction=0.5, max_rows=8) == 1
    with pytest.raises(ValueError, match="fraction"):
        rollout_batch_size(GiB, row, fraction=0.0, max_rows=8)
    with pytest.raises(ValueError, match="row_bytes"):
        rollout_batch_size(GiB, 0, fraction=0.5, max_rows=8)


def test_batch_size_setting():
    torch.manual_seed(0)
    gpt = build_model(ModelConfig.preset("tiny"), V)
    cpu = torch.device("cpu")
    assert resolve_batch_size(gpt, RolloutConfig(), prompt_len=20, device=cpu) == CPU_BATCH_SIZE
    assert (
        resolve_batch_size(gpt, RolloutConfig(batch_size=None), prompt_len=20, device=cpu) == CPU_BATCH_SIZE
    )
    assert resolve_batch_size(gpt, RolloutConfig(batch_size=7), prompt_len=20, device=cpu) == 7
    assert gpt.kv_bytes_per_position() == 2 * 2 * 64 * 4  # 2 layers x 64 wide, float32
    with pytest.raises(ValueError):
        RolloutConfig(batch_size=0)
    with pytest.raises(ValueError):
        RolloutConfig(batch_size="lots")

"""Chunked log-probs in `score_responses`: the same values and gradients as the one-pass
reference (`chunk_tokens=0`, every position's logits at once), and no (B, T, V) tensor kept
for the backward.

Random prompts and responses (left-padded prompts of mixed lengths, right-padded responses),
chunk sizes that do and do not divide T, one position per chunk, entropy on and off, every
arch. Gradients are those of a loss mixing log-probs, entropy and values with random weights.
"""

from __future__ import annotations

import pytest
import torch

from gae.models import ModelConfig, build_model, score_responses
from tests.test_models import hf_tiny_dir, one_torch_thread  # noqa: F401 (autouse fixture)

V = 300
B, P, T = 4, 6, 11


@pytest.fixture(scope="module", params=["gpt", "gru", "hf"])
def model(request, tmp_path_factory):
    if request.param == "hf":
        cfg = ModelConfig(arch="hf", hf_path=hf_tiny_dir(tmp_path_factory))
    else:
        cfg = ModelConfig.preset("tiny", arch=request.param)
    torch.manual_seed(0)
    m = build_model(cfg, V).eval()
    with torch.no_grad():
        m.value_head.weight.normal_(0, 0.5)
    return m


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(1, V, (B, P), generator=g)
    plen = torch.randint(1, P + 1, (B,), generator=g)
    pmask = torch.arange(P)[None] >= (P - plen)[:, None]  # left padding
    prompt = torch.where(pmask, prompt, torch.zeros_like(prompt))
    resp = torch.randint(1, V, (B, T), generator=g)
    rlen = torch.randint(0, T + 1, (B,), generator=g)
    amask = torch.arange(T)[None] < rlen[:, None]  # right padding, an empty row possible
    w = torch.randn(3, B, T, generator=g)
    return (prompt, pmask, resp, amask), w


def loss_and_grads(model, args, w, **kw):
    model.zero_grad(set_to_none=True)
    out = score_responses(model, *args, compute_entropy=True, **kw)
    loss = (w[0] * out.logprobs).sum() + (w[1] * out.entropy).sum() + (w[2] * out.values).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("chunk_tokens", [B, 3 * B, 5, 1, None])  # 1, 3 (not dividing 11), 1, 1 positions
def test_chunked_equals_one_pass(model, chunk_tokens):
    args, w = batch(seed=chunk_tokens or 0)
    ref, ref_g = loss_and_grads(model, args, w, chunk_tokens=0)
    got, got_g = loss_and_grads(model, args, w, chunk_tokens=chunk_tokens)
    for name in ("logprobs", "entropy", "values", "last_values"):
        torch.testing.assert_close(getattr(got, name), getattr(ref, name), atol=1e-5, rtol=1e-5)
    assert got_g.keys() == ref_g.keys() and ref_g
    for name, g in ref_g.items():
        torch.testing.assert_close(got_g[name], g, atol=1e-5, rtol=1e-4, msg=name)
    with torch.no_grad():  # no grad: plain chunks, same numbers
        nog = score_responses(model, *args, compute_entropy=False, chunk_tokens=chunk_tokens)
    torch.testing.assert_close(nog.logprobs, ref.logprobs.detach(), atol=1e-5, rtol=1e-5)
    assert nog.entropy is None


def test_no_full_vocabulary_tensor_is_kept_for_backward(model):
    """Vocabulary-wide tensors autograd saves during the forward: the one-pass reference keeps
    (B, T, V) ones; with chunks (of one position here) none at all, since checkpointed chunks
    keep only their inputs and recompute their logits in the backward."""
    args, _ = batch(seed=3)

    def largest_saved(chunk_tokens) -> int:
        sizes = []

        def pack(t):
            if t.dim() and t.shape[-1] == V:  # logits, probabilities (hidden widths are 32 and 64)
                sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = score_responses(model, *args, compute_entropy=True, chunk_tokens=chunk_tokens)
        (out.logprobs.sum() + out.entropy.sum()).backward()
        model.zero_grad(set_to_none=True)
        return max(sizes, default=0)

    assert largest_saved(0) >= B * T * V
    assert largest_saved(1) == 0  # B tokens per chunk


def test_rejects_negative_chunk(model):
    args, _ = batch(seed=4)
    with pytest.raises(ValueError, match="chunk_tokens must be >= 0"):
        score_responses(model, *args, chunk_tokens=-1)

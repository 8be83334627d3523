"""Log-probs, values and entropy of given responses: the one function rollouts and PPO share.

Layout: the prompt (left-padded, P columns) and the response (right-padded, T columns) are
concatenated into one (B, P + T) sequence. The logits that predict response token t sit at
column P - 1 + t, and so does the hidden state of "the state just before token t", which
is what V(s_t) reads. Response padding never needs masking from attention: it comes after
every real token, and attention is causal.

Memory: the vocabulary projection is computed a chunk of positions at a time. For each chunk,

    z = head(h)                                   # (B, c, V) logits of c positions
    log pi(a_t) = z[a_t] - logsumexp(z)           # (B, c)
    H_t = -sum_v pi(v) log pi(v)                  # (B, c)

and only the (B, c) results are kept. With autograd on, each chunk runs under activation
checkpointing (`torch.utils.checkpoint`, non-reentrant): the forward keeps no logits, and the
backward recomputes one chunk's logits at a time, so neither pass holds (B, T, V) (with a
150k vocabulary, 16 x 1024 tokens of float32 logits alone are 10 GB, and softmax and entropy
keep several such tensors for the backward). The price is one more head projection in the
backward. This is the chunking of Liger-Kernel's fused linear cross-entropy (Hsu et al. 2024),
kept in PyTorch so it runs on every device and under any `logits` a backbone defines (HF logit
scaling and soft-capping, output layers cut to the tokenizer). Liger's own kernel (0.8.5)
returns cross-entropy only, not the per-token entropy the loss and its metrics need, and runs
on CUDA only. `chunk_tokens=0` is the one-pass reference (the logits of every position at once).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from gae.models.actor_critic import ActorCritic

# Float32 logits per chunk when `chunk_tokens` is None: 512 MiB holds about 880 tokens of a 152k
# vocabulary (55 positions of a 16-row micro batch; the chunk's softmax and entropy temporaries
# take a few times that), while a vocabulary of a few thousand fits a whole (B, T) batch in one
# chunk, so small models keep the one-pass path and its speed.
LOGITS_CHUNK_BYTES = 512 << 20


@dataclass
class ScoreOutput:
    """logprobs, values, entropy: (B, T), 0 off the action mask (entropy None unless asked);
    last_values: (B,) V of the state after each row's last response token (bootstrap value).
    Iterates as (logprobs, values, entropy)."""

    logprobs: torch.Tensor
    values: torch.Tensor
    entropy: torch.Tensor | None
    last_values: torch.Tensor

    def __iter__(self):
        return iter((self.logprobs, self.values, self.entropy))


def _check(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"score_responses: {name} has shape {tuple(t.shape)}, expected {shape}")


def score_responses(
    model,
    prompt_tokens: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_tokens: torch.Tensor,
    action_mask: torch.Tensor,
    *,
    compute_entropy: bool = False,
    chunk_tokens: int | None = None,
) -> ScoreOutput:
    """Per-token log-prob under `model` at temperature 1 (no top-k/top-p) and V(s_t) before each token.

    Args:
        prompt_tokens, prompt_mask: (B, P), left-padded; mask True on real tokens.
        response_tokens, action_mask: (B, T), right-padded; mask True on tokens to score.
        chunk_tokens: tokens (rows x positions) whose logits exist at once; None sizes chunks to
            `LOGITS_CHUNK_BYTES` of float32 logits; 0 projects every position at once.
    Differentiable when grad is enabled. Outputs are 0 where `action_mask` is False.
    """
    B, P = prompt_tokens.shape
    T = response_tokens.shape[1]
    _check("prompt_mask", prompt_mask, (B, P))
    _check("response_tokens", response_tokens, (B, T))
    _check("action_mask", action_mask, (B, T))
    if P == 0:
        raise ValueError("score_responses: prompts must hold at least one token (e.g. BOS)")
    ids = torch.cat([prompt_tokens, response_tokens], 1)  # (B, P + T)
    attn = torch.cat([prompt_mask.bool(), torch.ones_like(action_mask, dtype=torch.bool)], 1)
    if chunk_tokens is not None and chunk_tokens < 0:
        raise ValueError(f"score_responses: chunk_tokens must be >= 0 (0: no chunking), got {chunk_tokens}")
    window = slice(P - 1, P + T - 1)  # the positions that predict response tokens 0..T-1
    targets = response_tokens.long()
    if isinstance(model, ActorCritic) and chunk_tokens != 0:
        hidden, values = model.hidden_and_values(ids, attn, window=window, response_start=P - 1)
        step = _chunk_positions(B, T, model.vocab_size, chunk_tokens)
        logprobs, entropy = _chunked_logprobs(model.actor.logits, hidden, targets, step, compute_entropy)
    else:
        if isinstance(model, ActorCritic):
            logits, values = model(
                ids, attn, logits_slice=window, response_start=P - 1
            )  # (B, T, V), (B, P + T)
        else:  # any module with the ActorCritic call signature
            logits, values = model(ids, attn)
            logits = logits[:, window]
        logprobs, entropy = _logprobs_entropy(logits, targets, compute_entropy)
    mask = action_mask.bool()
    logprobs = torch.where(mask, logprobs, torch.zeros_like(logprobs))
    v_all = values.float()
    v = v_all[:, P - 1 : P + T - 1]  # (B, T)
    v = torch.where(mask, v, torch.zeros_like(v))
    # state after the last scored token: column P - 1 + (last masked t) + 1
    has_any = mask.any(1)
    last_t = torch.where(
        has_any, T - 1 - mask.flip(1).long().argmax(1), torch.full_like(has_any, -1, dtype=torch.long)
    )
    last_values = v_all.gather(1, (P + last_t).unsqueeze(1)).squeeze(1)  # (B,)
    if entropy is not None:
        entropy = torch.where(mask, entropy, torch.zeros_like(entropy))
    return ScoreOutput(logprobs=logprobs, values=v, entropy=entropy, last_values=last_values)


def _logprobs_entropy(
    logits: torch.Tensor, targets: torch.Tensor, compute_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, c, V) logits, (B, c) targets -> log pi(target) (B, c) float32 and entropy (B, c) or None."""
    logits = logits.float()
    logz = torch.logsumexp(logits, -1)  # (B, c)
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz
    entropy = None
    if compute_entropy:
        logp = logits - logz.unsqueeze(-1)
        entropy = -(logp.exp() * logp).sum(-1)  # (B, c)
    return logprobs, entropy


def _chunk_positions(B: int, T: int, V: int, chunk_tokens: int | None) -> int:
    """Positions per chunk: `chunk_tokens` tokens over B rows (at least one position)."""
    if chunk_tokens is None:
        chunk_tokens = LOGITS_CHUNK_BYTES // (4 * max(int(V), 1))
    return max(1, min(max(T, 1), chunk_tokens // max(B, 1)))


def _chunked_logprobs(
    head, hidden: torch.Tensor, targets: torch.Tensor, step: int, compute_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`_logprobs_entropy(head(hidden), ...)` over `step` positions at a time: hidden (B, T, H),
    targets (B, T) -> (B, T) each. Chunks run under checkpointing when autograd records."""

    def one(h: torch.Tensor, tgt: torch.Tensor):
        lp, ent = _logprobs_entropy(head(h), tgt, compute_entropy)
        return (lp, ent) if ent is not None else (lp,)

    T = hidden.shape[1]
    if step >= T:  # one chunk: nothing to save by recomputing it
        return _logprobs_entropy(head(hidden), targets, compute_entropy)
    parts = []
    for s in range(0, T, step):
        h, tgt = hidden[:, s : s + step], targets[:, s : s + step]
        if torch.is_grad_enabled():
            parts.append(checkpoint(one, h, tgt, use_reentrant=False))
        else:
            parts.append(one(h, tgt))
    logprobs = torch.cat([p[0] for p in parts], 1)  # (B, T)
    entropy = torch.cat([p[1] for p in parts], 1) if compute_entropy else None
    return logprobs, entropy

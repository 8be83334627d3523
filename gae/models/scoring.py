"""Log-probs, values and entropy of given responses: the one function rollouts and PPO share.

Layout: the prompt (left-padded, P columns) and the response (right-padded, T columns) are
concatenated into one (B, P + T) sequence. The logits that predict response token t sit at
column P - 1 + t, and so does the hidden state of "the state just before token t", which
is what V(s_t) reads. Response padding never needs masking from attention: it comes after
every real token, and attention is causal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gae.models.actor_critic import ActorCritic


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
) -> ScoreOutput:
    """Per-token log-prob under `model` at temperature 1 (no top-k/top-p) and V(s_t) before each token.

    Args:
        prompt_tokens, prompt_mask: (B, P), left-padded; mask True on real tokens.
        response_tokens, action_mask: (B, T), right-padded; mask True on tokens to score.
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
    window = slice(P - 1, P + T - 1)  # the positions that predict response tokens 0..T-1
    if isinstance(model, ActorCritic):
        logits, values = model(ids, attn, logits_slice=window, response_start=P - 1)  # (B, T, V), (B, P + T)
    else:  # any module with the ActorCritic call signature
        logits, values = model(ids, attn)
        logits = logits[:, window]
    logits = logits.float()
    logz = torch.logsumexp(logits, -1)  # (B, T)
    mask = action_mask.bool()
    logprobs = logits.gather(-1, response_tokens.long().unsqueeze(-1)).squeeze(-1) - logz
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
    entropy = None
    if compute_entropy:
        logp = logits - logz.unsqueeze(-1)
        entropy = -(logp.exp() * logp).sum(-1)  # (B, T)
        entropy = torch.where(mask, entropy, torch.zeros_like(entropy))
    return ScoreOutput(logprobs=logprobs, values=v, entropy=entropy, last_values=last_values)

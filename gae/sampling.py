"""Token sampling shared by every decode loop: per-row seeded uniforms, temperature, top-k,
top-p, inverse-CDF draws, and the behaviour log-prob of the drawn token.

Every function here is a fixed sequence of tensor operations with no data-dependent host
control flow, so the same code runs in the dynamic loop, in the static loop and inside a
captured CUDA graph; the two loops draw the same tokens for the same seeds because they call
exactly these functions on the same logits.
"""

from __future__ import annotations

import torch


def row_uniforms(seeds: list[int], steps: int) -> torch.Tensor:
    """(B, steps) float64 uniforms in [0, 1), row b from its own generator seeded with seeds[b].

    Drawn for every step up front: one host-to-device copy instead of one per step, and no
    per-row Python call inside the decode loop. A row that stops early leaves its later draws
    unused, exactly as drawing them step by step would.
    """
    return torch.stack(
        [torch.rand(steps, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in seeds]
    )


def filter_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """(B, V) logits -> (B, V) float64 sampling probabilities (normalised) after temperature, top-k, then top-p.

    Top-p keeps the smallest prefix of tokens (by descending probability) whose mass reaches
    `top_p` (Holtzman et al. 2020), always at least the most likely token (so top_p -> 0 is
    greedy up to ties).
    """
    logits = logits.double() / temperature
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    if top_p < 1.0:
        sorted_p, idx = torch.sort(probs, -1, descending=True)
        drop_sorted = (sorted_p.cumsum(-1) - sorted_p) >= top_p  # mass before this token already enough
        # The first sorted token has 0 mass before it, which is ">= top_p" when top_p <= 0: keep it
        # anyway, or a row loses every token (0/0 = NaN probabilities).
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
    return probs / probs.sum(-1, keepdim=True)


def sample_tokens(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: (B, V) probs and (B,) uniforms in [0, 1) -> (B,) token ids.

    Deterministic given `u`, so per-row generators fully decide each row's draw.
    """
    cdf = probs.cumsum(-1)  # (B, V)
    target = (u.to(cdf) * cdf[:, -1]).unsqueeze(-1)  # (B, 1)
    tok = torch.searchsorted(cdf, target, right=True).squeeze(-1)  # first index with cdf > target
    return tok.clamp(max=probs.shape[-1] - 1)


def choose_tokens(
    logits: torch.Tensor, u: torch.Tensor | None, temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    """(B, V) float logits and (B,) uniforms -> (B,) tokens: argmax at temperature 0, else a
    filtered inverse-CDF draw."""
    if temperature == 0:
        return logits.argmax(-1)
    return sample_tokens(filter_probs(logits, temperature, top_k, top_p), u)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(B, V) logits, (B,) tokens -> (B,) log softmax(logits)[token]: the behaviour policy's
    log-prob at temperature 1, without top-k/top-p (see `gae.rollout`)."""
    return torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows -> (B, P) ids and bool mask, each row right-aligned (left padding)."""
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), P), dtype=torch.bool)
    for i, r in enumerate(rows):
        if r:
            ids[i, P - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, P - len(r) :] = True
    return ids.to(device), mask.to(device)

"""Critic-free group baselines (advantages-spec.md, "Critic-free estimators") and DAPO's
dynamic sampling over the same groups.

Computed from a per-sequence score `s_i` (B,) and a group id (B,) (the samples of one
prompt), broadcast over each sequence's action tokens (0 elsewhere). Statistics in float64.
"""

from __future__ import annotations

import torch

from gae.advantage_inputs import AdvantageInputError


def _check_group_inputs(scores, group_ids, mask):
    if not isinstance(scores, torch.Tensor) or scores.ndim != 1:
        raise AdvantageInputError(
            f"scores must be a 1-D (B,) tensor, got {getattr(scores, 'shape', type(scores))}"
        )
    if not torch.is_floating_point(scores):
        raise AdvantageInputError(f"scores must have a floating-point dtype, got {scores.dtype}")
    if not isinstance(group_ids, torch.Tensor) or group_ids.shape != scores.shape:
        raise AdvantageInputError(
            f"group_ids must be a tensor of shape {tuple(scores.shape)}, got {getattr(group_ids, 'shape', type(group_ids))}"
        )
    if torch.is_floating_point(group_ids) or group_ids.dtype == torch.bool:
        raise AdvantageInputError(f"group_ids must have an integer dtype, got {group_ids.dtype}")
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2 or mask.shape[0] != scores.shape[0]:
        raise AdvantageInputError(
            f"mask must be (B, T) with B = {scores.shape[0]}, got {getattr(mask, 'shape', type(mask))}"
        )
    m = mask if mask.dtype == torch.bool else mask != 0
    bad = ~torch.isfinite(scores)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise AdvantageInputError(f"scores[{i}] is {scores[i].item()} (must be finite)")
    return m


def _group_stats(scores: torch.Tensor, group_ids: torch.Tensor):
    """Per-sample group size, sum and unbiased std (float64), gathered back to (B,)."""
    _, inv = torch.unique(group_ids, return_inverse=True)
    G = int(inv.max()) + 1 if inv.numel() else 0
    s = scores.double()
    cnt = torch.zeros(G, dtype=torch.float64, device=s.device).index_add_(0, inv, torch.ones_like(s))
    tot = torch.zeros(G, dtype=torch.float64, device=s.device).index_add_(0, inv, s)
    mean = tot / cnt
    sq = torch.zeros(G, dtype=torch.float64, device=s.device).index_add_(0, inv, (s - mean[inv]) ** 2)
    std = torch.sqrt(sq / (cnt - 1).clamp(min=1))
    return cnt[inv], tot[inv], mean[inv], std[inv]


def _broadcast(a: torch.Tensor, m: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.where(m, a.to(dtype).unsqueeze(1), torch.zeros((), dtype=dtype, device=m.device))


def grpo_advantages(scores, group_ids, mask, *, eps: float = 1e-6, scale_by_std: bool = True):
    """GRPO (Shao et al. 2024): `(s_i - mean_g) / (std_g + eps)`, std unbiased; broadcast over
    the action tokens. `scale_by_std=False` is Dr. GRPO (Liu et al. 2025): `s_i - mean_g`.
    A group of one gets 0. Returns `(advantages, returns)` with returns = advantages."""
    m = _check_group_inputs(scores, group_ids, mask)
    cnt, _, mean, std = _group_stats(scores, group_ids)
    a = scores.double() - mean
    if scale_by_std:
        a = a / (std + eps)
    a = torch.where(cnt > 1, a, torch.zeros_like(a))
    adv = _broadcast(a, m, scores.dtype)
    return adv, adv.clone()


def dr_grpo_advantages(scores, group_ids, mask):
    """Dr. GRPO: `s_i - mean_g` (no std scaling, no length normalisation here)."""
    return grpo_advantages(scores, group_ids, mask, scale_by_std=False)


def rloo_advantages(scores, group_ids, mask):
    """RLOO (Ahmadian et al. 2024): `s_i - mean of the other samples of its group`; 0 alone."""
    m = _check_group_inputs(scores, group_ids, mask)
    cnt, tot, _, _ = _group_stats(scores, group_ids)
    s = scores.double()
    a = torch.where(cnt > 1, s - (tot - s) / (cnt - 1).clamp(min=1), torch.zeros_like(s))
    adv = _broadcast(a, m, scores.dtype)
    return adv, adv.clone()


def zero_variance_groups(scores: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """(B,) bool: True for the rows of groups whose scores are all equal (a group of one too).

    DAPO's dynamic sampling (Yu et al. 2025, arXiv 2503.14476, section 3.2, eq. 11) keeps only
    groups with 0 < #correct < G: in the others every group-baseline advantage is exactly 0,
    so their samples add no gradient but still dilute a token-mean loss. "All equal" is the
    same test for any score: exact equality of the group's minimum and maximum (float64).
    verl's DAPO recipe filters the same way on a chosen metric (`filter_groups.metric`:
    acc, score or seq_final_reward, std == 0), then samples more prompts until the batch
    is full; this function only finds the groups.
    """
    if not isinstance(scores, torch.Tensor) or scores.ndim != 1:
        raise AdvantageInputError(
            f"scores must be a 1-D (B,) tensor, got {getattr(scores, 'shape', type(scores))}"
        )
    if not isinstance(group_ids, torch.Tensor) or group_ids.shape != scores.shape:
        raise AdvantageInputError(
            f"group_ids must be a tensor of shape {tuple(scores.shape)}, got {getattr(group_ids, 'shape', type(group_ids))}"
        )
    if not bool(torch.isfinite(scores).all()):
        i = int((~torch.isfinite(scores)).nonzero()[0, 0])
        raise AdvantageInputError(f"scores[{i}] is {scores[i].item()} (must be finite)")
    _, inv = torch.unique(group_ids, return_inverse=True)
    G = int(inv.max()) + 1 if inv.numel() else 0
    s = scores.double()
    lo = torch.full((G,), float("inf"), dtype=torch.float64, device=s.device).scatter_reduce(
        0, inv, s, "amin"
    )
    hi = torch.full((G,), float("-inf"), dtype=torch.float64, device=s.device).scatter_reduce(
        0, inv, s, "amax"
    )
    return (lo == hi)[inv]

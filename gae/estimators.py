"""Every advantage estimator behind one call: the weighted k-step family, REINFORCE++, the registry.

`estimate(name, ...)` runs the estimator registered under `name` (`Estimator`): GAE and the
k-step mixes need a critic's values, the group baselines need the prompt of each sample.
GAE itself, its backends and its input checks are `gae.advantages`; the conventions
(masks, padding, errors) are the ones documented there and in `advantages-spec.md`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import Enum
from typing import Literal

import torch

from gae.advantage_inputs import (
    AdvantageInputError,
    check_float_2d,
    check_mask,
    first_bad_torch,
    validated,
    value_error,
)
from gae.advantages import compute_gae
from gae.group_baselines import dr_grpo_advantages, grpo_advantages, rloo_advantages
from gae.masked import masked_sum, masked_whiten

__all__ = [
    "Estimator",
    "compute_weighted_advantages",
    "estimate",
    "get_estimator",
    "parse_estimator",
    "reinforce_pp_advantages",
    "tail_weights",
]


# --------------------------------------------------------------------------- weighted family


def tail_weights(
    weighting: str, horizon: int, *, lam: float | None = None, p: float | None = None
) -> torch.Tensor:
    """`W_l = sum_{k > l} w_k` for l = 0..horizon-1 (float64), the kernel of the k-step mix.

    uniform: `w_k = 1/H` (k <= H); power: `w_k = k^-p / sum_{j<=H} j^-p`;
    exponential truncated at H: `w_k = (1-lam) lam^(k-1) / (1 - lam^H)`, and 1/H at lam = 1 (its limit).
    """
    H = horizon
    k = torch.arange(1, H + 1, dtype=torch.float64)
    if weighting == "uniform":
        w = torch.full((H,), 1.0 / H, dtype=torch.float64)
    elif weighting == "power":
        w = k.pow(-float(p))
        w = w / w.sum()
    elif weighting == "exponential" and lam >= 1.0:
        # the limit of the renormalised truncated weights as lam -> 1 is uniform over H (not the
        # H-step return, which lam = 1 exactly would give without renormalising)
        w = torch.full((H,), 1.0 / H, dtype=torch.float64)
    elif weighting == "exponential":
        w = (1 - lam) * torch.tensor(lam, dtype=torch.float64).pow(k - 1)
        w = w / w.sum()
    else:  # pragma: no cover - guarded by the caller
        raise AdvantageInputError(f"unknown weighting {weighting!r}")
    # W_l = sum_{k > l} w_k = sum_{k >= l+1} w_k: reverse cumulative sum.
    return w.flip(0).cumsum(0).flip(0)


def _advantages_from_tail(r, v, m, lv, gamma: float, W: torch.Tensor):
    """`A_t = sum_l gamma^l W_l delta_{t+l}` over each row's action subsequence.

    Action tokens are packed to the left of a `(B, N)` buffer (N = most actions in a row),
    so the masked convolution becomes a plain 1-D one; deltas past a row's end are 0,
    which makes k-step estimators that reach past the end the Monte-Carlo estimator.
    """
    B, T = r.shape
    n = m.sum(1)  # (B,)
    N = int(n.max()) if B else 0
    if N == 0:
        z = torch.zeros_like(r)
        return z, z.clone()
    packed = torch.arange(N, device=r.device).unsqueeze(0) < n.unsqueeze(1)  # (B, N)
    rp = torch.zeros((B, N), dtype=r.dtype, device=r.device)
    vp = torch.zeros((B, N), dtype=r.dtype, device=r.device)
    rp[packed] = r[m]  # boolean indexing keeps row-major order on both sides
    vp[packed] = v[m]
    vnext = torch.cat([vp[:, 1:], torch.zeros((B, 1), dtype=r.dtype, device=r.device)], dim=1)
    rows = torch.nonzero(n > 0).flatten()
    vnext[rows, n[rows] - 1] = lv[rows]  # V after the last action: the bootstrap
    delta = torch.where(packed, rp + gamma * vnext - vp, torch.zeros((), dtype=r.dtype, device=r.device))
    L = min(W.numel(), N)
    kern = W[:L] * torch.tensor(gamma, dtype=torch.float64).pow(torch.arange(L, dtype=torch.float64))
    kern = kern.to(device=r.device, dtype=r.dtype)
    # conv1d is a cross-correlation: out[k] = sum_l kern[l] * delta[k + l].
    ap = torch.nn.functional.conv1d(
        torch.nn.functional.pad(delta, (0, L - 1)).unsqueeze(1), kern.view(1, 1, L)
    )
    ap = ap.squeeze(1)
    adv = torch.zeros_like(r)
    ret = torch.zeros_like(r)
    adv[m] = ap[packed]
    ret[m] = ap[packed] + v[m]
    return adv, ret


def compute_weighted_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float,
    weighting: Literal["exponential", "uniform", "power"],
    lam: float | None = None,
    horizon: int | None = None,
    p: float | None = None,
    last_value: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A convex mix of k-step advantage estimators `A^(k)_t = sum_{l<k} gamma^l delta_{t+l}`.

    `A_t = sum_l gamma^l W_l delta_{t+l}`, `W_l` the tail sums of the weights `w_k`:
    exponential (`lam`, no horizon: exactly GAE; with a horizon, truncated and renormalised),
    uniform over `horizon` (`w_k = 1/H`), power over `horizon` (`w_k ∝ k^-p`).
    Shapes, masks, outputs and errors as in `compute_gae`.
    """
    if weighting not in ("exponential", "uniform", "power"):
        raise AdvantageInputError(f"weighting must be one of exponential, uniform, power, got {weighting!r}")
    if weighting == "exponential":
        if lam is None:
            raise AdvantageInputError("lam is required for the exponential weighting")
        if horizon is None:
            return compute_gae(rewards, values, mask, gamma=gamma, lam=lam, last_value=last_value)
    if horizon is None:
        raise AdvantageInputError(f"horizon is required for the {weighting} weighting")
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise AdvantageInputError(f"horizon must be an integer >= 1, got {horizon!r}")
    if weighting == "power" and (p is None or not math.isfinite(float(p)) or float(p) < 0):
        raise AdvantageInputError(f"p must be a finite number >= 0 for the power weighting, got {p!r}")
    r, v, m, gamma, lam_v, lv, odt = validated(
        rewards, values, mask, gamma, 0.0 if lam is None else lam, last_value
    )
    code, b, t = first_bad_torch(r, v, m, lv)
    if code:
        raise value_error(code, b, t, r, v, lv)
    W = tail_weights(weighting, horizon, lam=lam_v, p=p)
    adv, ret = _advantages_from_tail(r, v, m, lv, gamma, W)
    return adv.to(odt), ret.to(odt)


def reinforce_pp_advantages(rewards, mask, *, gamma: float = 1.0, whiten: bool = True):
    """REINFORCE++ (Hu 2025): discounted return-to-go over the action subsequence
    (observation tokens neither reset nor discount it), whitened over the batch.

    The whitening is part of this estimator's definition; `returns` are the raw
    returns-to-go. Computed as GAE with `V = 0, lam = 1`, so it runs on the fast backends.
    """
    rewards = check_float_2d("rewards", rewards)
    zeros = torch.zeros_like(rewards)
    _, ret = compute_gae(rewards, zeros, mask, gamma=gamma, lam=1.0)
    m = check_mask(mask, rewards.shape, rewards.device)
    adv = masked_whiten(ret, m) if whiten else ret.clone()
    return adv, ret


# --------------------------------------------------------------------------- registry


class Estimator(str, Enum):
    """Advantage estimators by name, as the config selects them."""

    GAE = "gae"
    UNIFORM = "uniform"
    POWER = "power"
    GRPO = "grpo"
    DR_GRPO = "dr_grpo"
    RLOO = "rloo"
    REINFORCE_PLUS_PLUS = "reinforce_plus_plus"

    @property
    def needs_critic(self) -> bool:
        return self in (Estimator.GAE, Estimator.UNIFORM, Estimator.POWER)


EstimatorFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
_REGISTRY: dict[Estimator, EstimatorFn] = {}


def register_estimator(name: Estimator) -> Callable[[EstimatorFn], EstimatorFn]:
    def deco(fn: EstimatorFn) -> EstimatorFn:
        _REGISTRY[name] = fn
        return fn

    return deco


def parse_estimator(name: str | Estimator) -> Estimator:
    try:
        return Estimator(name)
    except ValueError:
        valid = ", ".join(e.value for e in Estimator)
        raise ValueError(f"unknown advantage estimator {name!r}; valid: {valid}") from None


def get_estimator(name: str | Estimator) -> EstimatorFn:
    """The registered function for `name`. Every one takes the keyword arguments of
    `estimate` and returns `(advantages, returns)`; unknown names raise with the list."""
    return _REGISTRY[parse_estimator(name)]


def _scores_of(rewards, mask, scores):
    """Per-sequence scores: given, or the sum of a row's token rewards."""
    if scores is not None:
        return scores
    m = mask if mask.dtype == torch.bool else mask != 0
    return masked_sum(rewards, m, dim=1)


@register_estimator(Estimator.GAE)
def _est_gae(*, rewards, values, mask, gamma, lam, last_value=None, lam_critic=None, **_):
    return compute_gae(
        rewards, values, mask, gamma=gamma, lam=lam, last_value=last_value, lam_critic=lam_critic
    )


@register_estimator(Estimator.UNIFORM)
def _est_uniform(*, rewards, values, mask, gamma, horizon, last_value=None, **_):
    return compute_weighted_advantages(
        rewards, values, mask, gamma=gamma, weighting="uniform", horizon=horizon, last_value=last_value
    )


@register_estimator(Estimator.POWER)
def _est_power(*, rewards, values, mask, gamma, horizon, p, last_value=None, **_):
    return compute_weighted_advantages(
        rewards, values, mask, gamma=gamma, weighting="power", horizon=horizon, p=p, last_value=last_value
    )


@register_estimator(Estimator.GRPO)
def _est_grpo(*, rewards, mask, group_ids, scores=None, eps=1e-6, **_):
    return grpo_advantages(_scores_of(rewards, mask, scores), group_ids, mask, eps=eps)


@register_estimator(Estimator.DR_GRPO)
def _est_dr_grpo(*, rewards, mask, group_ids, scores=None, **_):
    return dr_grpo_advantages(_scores_of(rewards, mask, scores), group_ids, mask)


@register_estimator(Estimator.RLOO)
def _est_rloo(*, rewards, mask, group_ids, scores=None, **_):
    return rloo_advantages(_scores_of(rewards, mask, scores), group_ids, mask)


@register_estimator(Estimator.REINFORCE_PLUS_PLUS)
def _est_rpp(*, rewards, mask, gamma, **_):
    return reinforce_pp_advantages(rewards, mask, gamma=gamma)


def estimate(
    name: str | Estimator,
    *,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float | torch.Tensor = 0.95,
    last_value: torch.Tensor | float | None = None,
    lam_critic: float | torch.Tensor | None = None,
    scores: torch.Tensor | None = None,
    group_ids: torch.Tensor | None = None,
    horizon: int | None = None,
    p: float | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the estimator registered under `name` (see `Estimator`) with one call shape.

    Critic-based estimators need `values`; group estimators need `group_ids` and use
    `scores` (B,) or, when absent, each row's summed token rewards. `lam` may be a (B,)
    tensor and `lam_critic` set (decoupled GAE) for the `gae` estimator only.
    """
    est = parse_estimator(name)
    if est is not Estimator.GAE and (lam_critic is not None or isinstance(lam, torch.Tensor)):
        raise AdvantageInputError(
            f"estimator {est.value!r} takes neither lam_critic nor a per-row lam; decoupled and "
            "per-row lambdas are GAE's (estimator 'gae')"
        )
    if est.needs_critic and values is None:
        raise AdvantageInputError(f"estimator {est.value!r} needs values from a critic")
    if est in (Estimator.GRPO, Estimator.DR_GRPO, Estimator.RLOO) and group_ids is None:
        raise AdvantageInputError(f"estimator {est.value!r} needs group_ids (the prompt of each sample)")
    return _REGISTRY[est](
        rewards=rewards,
        values=values,
        mask=mask,
        gamma=gamma,
        lam=lam,
        last_value=last_value,
        lam_critic=lam_critic,
        scores=scores,
        group_ids=group_ids,
        horizon=horizon,
        p=p,
        eps=eps,
    )

"""PPO losses: pure functions of `(B, T)` tensors that return `(loss, metrics)`.

Conventions (verl `core_algos.py`, whose metric names we keep):

- every per-token tensor is `(B, T)`; `mask` is True on action tokens; values off the
  mask never reach a loss or a metric (NaN there is fine);
- `loss` is a 0-d tensor (differentiable), `metrics` a dict of Python floats;
- the reduction of a per-token loss matrix over tokens and sequences is one named step,
  `aggregate(loss_mat, mask, mode)`, because the choice changes the gradient's weighting
  of long versus short responses (Liu et al. 2025, "Understanding R1-Zero-Like Training",
  on the length bias of per-sequence means):

      token-mean            sum_{b,t} m l / sum_{b,t} m                (every token weighs the same)
      seq-mean-token-mean   mean_b [ sum_t m l / sum_t m ]            (every sequence weighs the same)
      seq-mean-token-sum    mean_b [ sum_t m l ]                      (Dr. GRPO's unnormalised sum)

  The sequence means run over rows with at least one action token; an empty row
  contributes nothing (verl divides by its zero length and gets NaN).
"""

from __future__ import annotations

from typing import Literal

import torch

from gae.masked import masked_mean, masked_sum, masked_var

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]
AGG_MODES: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
RatioLevel = Literal["token", "sequence"]
# verl clamps GSPO's log ratio at 10 before exp (compute_policy_loss_gspo): e^10 is far outside
# any clip range, and float32 exp overflows past ~88.
MAX_SEQ_LOG_RATIO = 10.0


def _check_same(mask: torch.Tensor, **tensors: torch.Tensor) -> torch.Tensor:
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (B, T), got shape {tuple(mask.shape)}")
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.shape != mask.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but mask has shape {tuple(mask.shape)}")
        if not torch.is_floating_point(t):
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    return mask if mask.dtype == torch.bool else mask != 0


def _zero_off(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    # torch.where, not x * m: NaN * 0 is NaN, and garbage off the mask must not leak.
    return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))


def aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, mode: AggMode = "token-mean") -> torch.Tensor:
    """Reduce a `(B, T)` per-token loss to a scalar over action tokens (see module docstring).

    A batch with no action token gives 0 (no gradient), not NaN.
    """
    m = _check_same(mask, loss_mat=loss_mat)
    if mode == "token-mean":
        return masked_mean(loss_mat, m)
    row_n = m.sum(-1)  # (B,)
    row_sum = masked_sum(loss_mat, m, dim=-1)  # (B,)
    nonempty = row_n > 0
    n_rows = nonempty.sum().clamp(min=1).to(loss_mat.dtype)
    if mode == "seq-mean-token-mean":
        per_row = row_sum / row_n.clamp(min=1).to(loss_mat.dtype)
    elif mode == "seq-mean-token-sum":
        per_row = row_sum
    else:
        raise ValueError(f"loss aggregation mode {mode!r} is not one of {', '.join(AGG_MODES)}")
    return torch.where(nonempty, per_row, torch.zeros_like(per_row)).sum() / n_rows


def sequence_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO's sequence-level importance ratio (Zheng et al. 2025, arXiv 2507.18071, eq. 7) in
    its token form ("GSPO-token", eq. 13), (B, T), exactly 1 off the mask:

        s_i     = exp( (1/|y_i|) sum_t (logp_{i,t} - old_logp_{i,t}) )   (geometric mean of token ratios)
        s_{i,t} = sg[s_i] * pi(y_{i,t}) / sg[pi(y_{i,t})]

    Every action token of row i holds the value s_i, so the clip is decided per sequence; the
    gradient of s_{i,t} is s_i * grad logp_{i,t}, so averaged over the row's tokens it is
    grad s_i: with a per-sequence advantage this is GSPO exactly, and it also takes per-token
    advantages (GAE). The log ratio is clamped at 10 before exp, as verl does. A one-token
    response gets its token ratio (value and gradient). An empty row gets 1.
    """
    m = _check_same(mask, logprobs=logprobs, old_logprobs=old_logprobs)
    log_ratio = _zero_off(logprobs - old_logprobs, m)
    n = m.sum(-1).clamp(min=1).to(logprobs.dtype)  # (B,)
    seq_log_ratio = (log_ratio.sum(-1) / n).detach()  # (B,) log s_i, no gradient
    log_s = logprobs - logprobs.detach() + seq_log_ratio.unsqueeze(-1)  # (B, T) value log s_i
    return torch.exp(_zero_off(log_s.clamp(max=MAX_SEQ_LOG_RATIO), m))


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: AggMode = "token-mean",
    ratio_level: RatioLevel = "token",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate objective (Schulman et al. 2017, eq. 7), optionally dual-clipped.

        r_t   = exp(logp_t - old_logp_t)                   (ratio_level "token")
        r_t   = s_{i,t} of `sequence_ratio`                 (ratio_level "sequence": GSPO)
        l_t   = max(-A_t r_t, -A_t clip(r_t, 1 - clip_low, 1 + clip_high))
        dual clip, for A_t < 0 only (Ye et al. 2020, "Mastering Complex Control in MOBA
        Games with Deep Reinforcement Learning"): l_t = min(l_t, -A_t c), c = dual_clip > 1,
        which bounds the loss of a token whose ratio has run far above 1 + clip_high.

    Asymmetric bounds (`clip_high > clip_low`) are DAPO's "clip-higher" (Yu et al. 2025).
    GSPO uses much smaller bounds (3e-4 / 4e-4 in the paper: a geometric mean of ratios moves
    far less than one ratio) and the sequence mean (`agg="seq-mean-token-mean"`), which with
    the sequence ratio is the paper's (1/G) sum_i min(s_i A_i, clip(s_i) A_i). This matches
    verl's `compute_policy_loss_gspo` (same stop-gradient form, same clamp of the log ratio
    at 10); we differ in keeping the dual clip available and the KL metrics token-level
    (verl reports its ppo_kl token-level too).

    Args:
        logprobs: (B, T) current policy log-probs (carry the gradient).
        old_logprobs: (B, T) behaviour policy log-probs (the rollout's).
        advantages: (B, T).
        mask: (B, T) bool, action tokens.

    Metrics (verl names): actor/pg_loss, actor/pg_clipfrac (fraction of tokens where the
    clipped branch is the larger loss), actor/pg_clipfrac_lower (dual clip active),
    actor/ppo_kl (mean of old_logp - logp, verl's estimate of KL(old || new)),
    actor/approx_kl (mean of (r - 1) - log r, the non-negative k3 estimate; Schulman 2020,
    "Approximating KL Divergence"), which early stopping on a target KL reads.
    """
    m = _check_same(mask, logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages)
    if not (clip_low >= 0 and clip_high >= 0):
        raise ValueError(f"clip_low and clip_high must be >= 0, got {clip_low}, {clip_high}")
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1.0 (or None), got {dual_clip}")
    if ratio_level not in ("token", "sequence"):
        raise ValueError(f"ratio_level must be 'token' or 'sequence', got {ratio_level!r}")
    adv = _zero_off(advantages, m)
    log_ratio = _zero_off(logprobs - old_logprobs, m)
    tok_ratio = torch.exp(log_ratio)  # (B, T), exactly 1 off the mask
    ratio = tok_ratio if ratio_level == "token" else sequence_ratio(logprobs, old_logprobs, m)
    loss1 = -adv * ratio
    loss2 = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clipped = torch.maximum(loss1, loss2)
    clipfrac = masked_mean((loss2 > loss1).to(logprobs.dtype), m)
    if dual_clip is not None:
        loss3 = -adv * dual_clip
        dual = torch.minimum(clipped, loss3)
        lower = (clipped > loss3) & (adv < 0)
        pg_losses = torch.where(adv < 0, dual, clipped)
        clipfrac_lower = masked_mean(lower.to(logprobs.dtype), m)
    else:
        pg_losses = clipped
        clipfrac_lower = torch.zeros(())
    loss = aggregate(pg_losses, m, agg)
    with torch.no_grad():
        ppo_kl = masked_mean(-log_ratio, m)
        approx_kl = masked_mean((tok_ratio - 1.0) - log_ratio, m)
    metrics = {
        "actor/pg_loss": float(loss.detach()),
        "actor/pg_clipfrac": float(clipfrac),
        "actor/pg_clipfrac_lower": float(clipfrac_lower),
        "actor/ppo_kl": float(ppo_kl),
        "actor/approx_kl": float(approx_kl),
    }
    return loss, metrics


def positive_nll_loss(
    logprobs: torch.Tensor, positive: torch.Tensor, *, denominator: float | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """VAPO's positive-example LM loss (Yue et al. 2025, arXiv 2504.05118, eq. 10): the
    negative log-likelihood of the tokens of responses judged correct, averaged over those
    tokens, so the policy also imitates its own successes (weight mu = 0.1 in the paper):

        L_NLL = -(1 / sum_{o in T} |o|) sum_{o in T} sum_t log pi(o_t),   T = positive samples

    positive: (B, T) bool, the action tokens of the positive rows. `denominator` is the count
    of positive tokens to divide by (the whole minibatch's when this is one micro batch of it,
    see `gae.ppo_steps.loss_denominators`); None: those of `positive`. No positive token: 0.
    Metric: actor/positive_nll (the loss's value on these tokens).
    """
    m = _check_same(positive, logprobs=logprobs)
    n = float(m.sum()) if denominator is None else float(denominator)
    loss = -masked_sum(logprobs, m) / max(n, 1.0)
    return loss, {"actor/positive_nll": float(loss.detach())}


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float | None = 0.2,
    agg: AggMode = "token-mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss (the PPO2 baselines form, also verl's and cleanrl's).

        v_clip = old_v + clip(v - old_v, -clip, clip)
        l_t    = 0.5 * max((v - R)^2, (v_clip - R)^2)          (no clip: 0.5 (v - R)^2)

    `clip=None` disables clipping. Metrics: critic/vf_loss, critic/vf_clipfrac (fraction of
    tokens where the clipped branch is the larger loss), critic/vpred_mean.
    """
    m = _check_same(mask, values=values, old_values=old_values, returns=returns)
    v = _zero_off(values, m)
    ret = _zero_off(returns, m)
    l1 = (v - ret) ** 2
    if clip is None:
        losses = l1
        clipfrac = torch.zeros(())
    else:
        if clip < 0:
            raise ValueError(f"value clip must be >= 0 or None, got {clip}")
        old = _zero_off(old_values, m)
        v_clip = old + torch.clamp(v - old, -clip, clip)
        l2 = (v_clip - ret) ** 2
        losses = torch.maximum(l1, l2)
        clipfrac = masked_mean((l2 > l1).to(values.dtype), m)
    loss = 0.5 * aggregate(losses, m, agg)
    metrics = {
        "critic/vf_loss": float(loss.detach()),
        "critic/vf_clipfrac": float(clipfrac),
        "critic/vpred_mean": float(masked_mean(v.detach(), m)),
    }
    return loss, metrics


def entropy_loss(
    entropy: torch.Tensor, mask: torch.Tensor, *, agg: AggMode = "token-mean"
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean policy entropy over action tokens. The trainer *subtracts* `coef * loss`
    (a bonus: higher entropy lowers the total loss). Metric: actor/entropy."""
    m = _check_same(mask, entropy=entropy)
    loss = aggregate(entropy, m, agg)
    return loss, {"actor/entropy": float(loss.detach())}


def kl_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    agg: AggMode = "token-mean",
    estimator: str = "k3",
    clamp: float | None = 10.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """KL to the reference as a loss term (KL placement `loss`, as in GRPO, Shao et al.
    2024): aggregate of `gae.shaping.kl_per_token` with the run's estimator and clamp, the
    same numbers as the store's `kl` column (k3 clamped to [-10, 10] is verl's `low_var_kl`).
    The trainer adds `kl_coef * loss`. Metric: actor/kl_loss."""
    from gae.shaping import kl_per_token

    m = _check_same(mask, logprobs=logprobs, ref_logprobs=ref_logprobs)
    kl = kl_per_token(logprobs, ref_logprobs, m, estimator, clamp)
    loss = aggregate(kl, m, agg)
    return loss, {"actor/kl_loss": float(loss.detach())}


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[R - V] / Var[R] over action tokens (unbiased variances), as verl and cleanrl.

    1 is a perfect critic, 0 no better than a constant, negative worse than one.
    NaN when the returns do not vary (the ratio is undefined), as cleanrl reports it;
    also NaN with fewer than 2 action tokens.
    """
    m = _check_same(mask, values=values, returns=returns)
    if int(m.sum()) < 2:
        return float("nan")
    var_r = float(masked_var(returns.detach().double(), m))
    if var_r == 0.0:
        return float("nan")
    var_d = float(masked_var((returns.detach().double() - values.detach().double()), m))
    return 1.0 - var_d / var_r

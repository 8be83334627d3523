"""From one score per sequence to per-token rewards `(B, T)`, with KL to a reference.

Conventions (advantages-spec.md, Rewards):
- The score lands on ONE action token per row: the last action token (default) or the
  EOS token. Never on padding after EOS: TRL's PPO trainer once put it there, where GAE
  with a padding-blind critic turns it into noise.
- A row without EOS (finish_reason 'length') follows a missing-EOS policy: `none` (score
  as is), `penalty` (score minus `missing_eos_penalty`, TRL's `missing_eos_penalty`) or
  `zero_score` (score replaced by 0).
- KL per action token, by estimator (Schulman, "Approximating KL divergence", 2020), with
  r = ref_logp - logp (log of the ratio ref/policy, samples drawn from the policy):
      k1 = -r = logp - ref_logp                (unbiased, high variance, can be negative)
      k2 = r^2 / 2                             (biased, low variance)
      k3 = exp(r) - r - 1                      (unbiased, always >= 0)
  optionally clamped to [-clamp, clamp]. KL placement is one setting: `reward`
  (r_t -= beta * kl_t, Ziegler et al. 2019 / InstructGPT), `loss` (the trainer adds
  beta * kl to its loss, GRPO-style) or `none`.
- The coefficient beta is fixed or adaptive (Ziegler et al. 2019, sec. 2.2):
      beta <- beta * (1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon).

The math functions take tensors and floats; `shape_rewards` is the one entry point that
reads a batch and a config, as the interface contract asks.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

KL_ESTIMATORS = ("k1", "k2", "k3")


class KLConfig(BaseModel):
    """KL to the frozen reference policy."""

    model_config = ConfigDict(extra="forbid")

    placement: Literal["reward", "loss", "none"] = Field(
        default="reward",
        description="Where KL acts: subtracted from token rewards, added to the loss, or nowhere.",
    )
    estimator: Literal["k1", "k2", "k3"] = Field(default="k1", description="Per-token KL estimator.")
    clamp: float | None = Field(
        default=None,
        gt=0,
        description="Clamp each token's KL estimate to [-clamp, clamp] (None: no clamp), in the rewards, "
        "the store's kl column and the KL loss alike; with placement=loss and k3, 10 is verl's low_var_kl.",
    )
    coef: float = Field(default=0.05, ge=0, description="Initial (or fixed) KL coefficient beta.")
    target: float | None = Field(
        default=None,
        gt=0,
        description="Target KL per sequence for the adaptive controller; None: beta is fixed.",
    )
    horizon: int = Field(
        default=10000, gt=0, description="Adaptive controller horizon in samples (Ziegler et al.)."
    )

    @model_validator(mode="after")
    def _k1_is_no_loss(self) -> KLConfig:
        if self.placement == "loss" and self.estimator == "k1":
            # E_pi[grad log pi] = 0: as a loss on the policy's own samples, k1 = log pi - log ref
            # has zero expected gradient, so the penalty would silently do nothing.
            raise ValueError(
                "shaping.kl.placement=loss needs estimator k2 or k3 (GRPO uses k3): the k1 estimate "
                "as a loss has zero expected gradient"
            )
        return self


class ShapingConfig(BaseModel):
    """How sequence scores become per-token rewards."""

    model_config = ConfigDict(extra="forbid")

    score_position: Literal["last_action", "eos"] = Field(
        default="last_action",
        description="Token that receives the score: the last action token, or the (last) EOS token on the "
        "action mask (falls back to the last action token in rows without EOS).",
    )
    missing_eos: Literal["none", "penalty", "zero_score"] = Field(
        default="none", description="Policy for rows that hit the length limit without EOS."
    )
    missing_eos_penalty: float = Field(
        default=1.0, description="Subtracted from the score of rows without EOS when missing_eos='penalty'."
    )
    kl: KLConfig = Field(default_factory=KLConfig, description="KL estimator, placement and coefficient.")

    @model_validator(mode="after")
    def _check(self) -> ShapingConfig:
        if self.missing_eos == "penalty" and self.missing_eos_penalty < 0:
            raise ValueError("ShapingConfig.missing_eos_penalty is subtracted; give a value >= 0")
        return self


# ---------------------------------------------------------------------------------------
# pure math


def _check_bt(name: str, x: torch.Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {shape}")


def kl_per_token(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    estimator: str = "k1",
    clamp: float | None = None,
) -> torch.Tensor:
    """Per-token KL estimate (B, T); exactly 0 off the mask, whatever the inputs hold there."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be (B, T), got shape {tuple(mask.shape)}")
    _check_bt("logprobs", logprobs, tuple(mask.shape))
    _check_bt("ref_logprobs", ref_logprobs, tuple(mask.shape))
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; valid: {list(KL_ESTIMATORS)}")
    mask = mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    # Zero the log-ratio off the mask first so garbage (or inf) there cannot turn into NaN.
    log_ratio = torch.where(mask, ref_logprobs - logprobs, zero)  # log(ref / policy)
    if estimator == "k1":
        kl = -log_ratio
    elif estimator == "k2":
        kl = 0.5 * log_ratio.square()
    else:
        # exp(r) - 1 - r, expm1 keeps precision near 0; r clamped to [-20, 20] first (as verl's
        # low_var_kl) so one token far off the reference gives a large finite value, not inf
        r = log_ratio.clamp(-20.0, 20.0)
        kl = torch.expm1(r) - r
    if clamp is not None:
        kl = kl.clamp(-clamp, clamp)
    return torch.where(mask, kl, zero)


def score_positions(
    mask: torch.Tensor,
    response_tokens: torch.Tensor | None = None,
    eos_id: int | None = None,
    position: str = "last_action",
) -> torch.Tensor:
    """(B,) int64 index of the token that receives each row's score.

    'last_action': the last True of `mask`. 'eos': the last action token equal to `eos_id`,
    or the last action token in rows without one. A row with no action token is an error.
    """
    mask = mask.bool()
    B, T = mask.shape
    empty = ~mask.any(1)
    if bool(empty.any()):
        raise ValueError(f"row {int(empty.nonzero()[0])} has no action token: nowhere to put its score")
    ar = torch.arange(T, device=mask.device).expand(B, T)
    last = torch.where(mask, ar, -1).amax(1)
    if position == "last_action":
        return last
    if position != "eos":
        raise ValueError(f"score_position must be 'last_action' or 'eos', got {position!r}")
    if response_tokens is None or eos_id is None:
        raise ValueError("score_position='eos' needs response_tokens and eos_id (batch.meta['eos_id'])")
    is_eos = mask & (response_tokens == eos_id)
    eos_pos = torch.where(is_eos, ar, -1).amax(1)
    return torch.where(eos_pos >= 0, eos_pos, last)


def apply_missing_eos(
    scores: torch.Tensor, truncated: torch.Tensor, policy: str = "none", penalty: float = 1.0
) -> torch.Tensor:
    """Scores (B,) after the missing-EOS policy for the rows where `truncated` (B,) is True."""
    if policy == "none":
        return scores
    truncated = truncated.bool().to(scores.device)
    if policy == "penalty":
        return torch.where(truncated, scores - penalty, scores)
    if policy == "zero_score":
        return torch.where(truncated, torch.zeros_like(scores), scores)
    raise ValueError(f"missing_eos must be 'none', 'penalty' or 'zero_score', got {policy!r}")


def place_scores(scores: torch.Tensor, positions: torch.Tensor, T: int) -> torch.Tensor:
    """(B, T) float tensor: scores[b] at [b, positions[b]], 0 elsewhere."""
    out = torch.zeros(scores.shape[0], T, dtype=torch.float32, device=scores.device)
    out.scatter_(1, positions.long().unsqueeze(1), scores.float().unsqueeze(1))
    return out


def shape_rewards(
    scores: torch.Tensor, batch, cfg: ShapingConfig, kl_coef: float, *, eos_id: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards and per-token KL, both (B, T) float32 and 0 off the action mask.

    scores: (B,) sequence scores (`ScoreTable.total`). kl_coef: the controller's current beta.
    eos_id: for score_position='eos' (default `batch.meta['eos_id']`); without one, EOS is
    taken to be the last action token of rows with finish_reason 'eos', as the batch contract says.
    The KL tensor is returned for every placement (the store keeps it; the trainer uses it
    when placement is 'loss'); it enters the rewards only when placement is 'reward'.
    """
    mask = batch.action_mask.bool()
    B, T = mask.shape
    if tuple(scores.shape) != (B,):
        raise ValueError(f"scores has shape {tuple(scores.shape)}, expected ({B},) for this batch")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(
            f"scores has a non-finite value at row {int((~torch.isfinite(scores)).nonzero()[0])}"
        )
    scores = scores.to(mask.device)
    truncated = torch.tensor([f != "eos" for f in batch.finish_reasons], dtype=torch.bool, device=mask.device)
    scores = apply_missing_eos(scores, truncated, cfg.missing_eos, cfg.missing_eos_penalty)
    if eos_id is None:
        eos_id = batch.meta.get("eos_id")
    position = cfg.score_position
    if position == "eos" and eos_id is None:
        # Without the id, the batch contract still says where EOS is: rows that finished by
        # 'eos' end with it as their last action token; rows cut by the limit have none.
        position = "last_action"
    pos = score_positions(mask, batch.response_tokens, eos_id, position)
    rewards = place_scores(scores, pos, T)
    kl = kl_per_token(
        batch.logprobs.float(), batch.ref_logprobs.float(), mask, cfg.kl.estimator, cfg.kl.clamp
    )
    if cfg.kl.placement == "reward":
        rewards = rewards - kl_coef * kl  # kl is 0 off the mask, so padding stays 0
    return rewards, kl


def overlong_penalty(
    lengths: torch.Tensor, max_length: int, buffer: int, penalty: float = 1.0
) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv 2503.14476, eq. 13), scaled by
    `penalty` (1 in the paper), for responses of `lengths` (B,) tokens under a limit L_max:

        R_length(l) = 0                                   l <= L_max - L_buf
                    = ((L_max - L_buf) - l) / L_buf       L_max - L_buf < l <= L_max
                    = -1                                  l > L_max

    so a response entering the last L_buf tokens before the limit loses reward linearly, down
    to -penalty at the limit, instead of the cliff of a truncation penalty. It is added to
    the sequence score. verl's DAPO reward manager computes the same for l <= L_max
    (`min(-(l - (L_max - L_buf)) / L_buf * penalty_factor, 0)`); it has no l > L_max case,
    since its responses cannot be longer. Returns (B,) float32.
    """
    if not isinstance(lengths, torch.Tensor) or lengths.ndim != 1:
        raise ValueError(f"lengths must be a (B,) tensor, got {getattr(lengths, 'shape', type(lengths))}")
    if not (1 <= int(buffer) <= int(max_length)):
        raise ValueError(f"overlong buffer must be in [1, max_length={max_length}], got {buffer}")
    if not penalty >= 0:
        raise ValueError(f"overlong penalty must be >= 0, got {penalty}")
    ell = lengths.to(torch.float64)
    expected = float(max_length - buffer)
    soft = ((expected - ell) / float(buffer)).clamp(max=0.0)
    r = torch.where(ell > max_length, torch.full_like(soft, -1.0), soft) * float(penalty)
    return r.to(torch.float32)


OVERLONG_COLUMN = "overlong"


def add_overlong_component(table, batch, buffer: int, penalty: float):
    """`table` (a `gae.rewards.ScoreTable`) with the overlong penalty of `batch`'s responses as
    one more component, `overlong`, of weight 1 (so the store and MLflow show it as its own
    column) and added to `total`. A response's length is its action tokens (EOS included); the
    limit is the rollout's `max_new_tokens` (`batch.meta["sampling"]`)."""
    max_length = (batch.meta.get("sampling") or {}).get("max_new_tokens")
    if max_length is None:
        raise ValueError(
            "rewards.overlong_buffer needs the rollout's max_new_tokens (batch.meta['sampling'])"
        )
    if OVERLONG_COLUMN in table.components:
        raise ValueError(
            f"a reward component is already named {OVERLONG_COLUMN!r}; rename it to use overlong_buffer"
        )
    lengths = batch.action_mask.bool().sum(1).cpu()
    pen = overlong_penalty(lengths, int(max_length), int(buffer), float(penalty))
    return type(table)(
        total=(table.total.double() + pen.double()).float(),
        components={**table.components, OVERLONG_COLUMN: pen},
        weights={**table.weights, OVERLONG_COLUMN: 1.0},
    )


def score_without_overlong(table) -> torch.Tensor:
    """(B,) float64: the sequence score of `table` (a `gae.rewards.ScoreTable`) before DAPO's
    overlong penalty, sum_k w_k * component_k over every component but `overlong`; `total`
    itself when there is no overlong component.

    What DAPO's dynamic sampling judges on (arXiv 2503.14476, eq. 11: 0 < #correct < G, on
    accuracy, not on the length-shaped reward): a group whose samples are all correct but of
    different lengths differs only by the length penalty, and is still a group without signal.
    Summed from the stored float32 components, so equal components give bitwise-equal scores
    (subtracting the penalty from the float32 total could leave a rounding difference)."""
    if OVERLONG_COLUMN not in table.components:
        return table.total.double()
    out = torch.zeros_like(table.total, dtype=torch.float64)
    for name, col in table.components.items():
        if name != OVERLONG_COLUMN:
            out += table.weights[name] * col.double()
    return out


# ---------------------------------------------------------------------------------------
# KL coefficient controllers


class FixedKLController:
    """beta stays at its initial value."""

    kind = "fixed"

    def __init__(self, value: float):
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"KL controller state is of kind {state.get('kind')!r}, expected {self.kind!r}")
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. 2019 (arXiv:1909.08593, sec. 2.2): proportional control of the KL.

    e = clip(kl / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n_steps / horizon),
    where `kl` is the mean per-sequence KL of the last batch and n_steps its sample count.
    """

    kind = "adaptive"

    def __init__(self, init_value: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0, got {target}, {horizon}")
        self.value = float(init_value)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"KL controller state is of kind {state.get('kind')!r}, expected {self.kind!r}")
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = int(state["horizon"])


def build_kl_controller(cfg: KLConfig) -> FixedKLController | AdaptiveKLController:
    """Adaptive when `cfg.target` is set, fixed otherwise."""
    if cfg.target is None:
        return FixedKLController(cfg.coef)
    return AdaptiveKLController(cfg.coef, cfg.target, cfg.horizon)


def sequence_kl(kl: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) summed KL of each row over its action tokens: what the adaptive controller tracks."""
    return torch.where(mask.bool(), kl, torch.zeros((), dtype=kl.dtype, device=kl.device)).sum(1)

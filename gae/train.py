"""The PPO update over one iteration's rollouts (Schulman et al. 2017), verl's metric names.

One call, `ppo_update`, does what verl's `update_actor` + `update_critic` do for one
iteration, on one ActorCritic. Its body is these named steps (`gae.ppo_steps`), in this order:

    train_logprobs = score_rollout(model, batch)             # 1. score: no grad, before any step
    A = prepare_advantages(advantages)                        # 2. advantages: whiten over action tokens
    for epoch, mb in minibatch_schedule(B):                   # fixed-seed permutation per epoch
        N = loss_denominators(mask[mb])                       # action tokens, non-empty rows (global in DP)
        for mu in micro batches of mb:                        # gradient accumulation
            logp, V, H = score(model, mu)                     # gae.models.score_responses
            pg, kl = policy_objective(logp, old_logp, A, H)   # 3. clip surrogate - c_H H; c_KL k(logp, ref_logp)
            vf = value_objective(V, old_V, R)                 # 4. c_V * clipped value loss
            backward(joint_loss(pg, kl, vf) * share of N      #    micro_batch_weights
                     + c_NLL * positive_nll(logp))            #    VAPO, over N's positive tokens
        optimizer_step()                                      # 5. clip grad norm, AdamW (unless target KL hit)

Options from recent papers, each one line of the sketch: `ratio_level="sequence"` swaps the
token ratio in step 3 for GSPO's per-sequence ratio; `positive_nll_coef` adds VAPO's NLL on
responses scoring at least `positive_score_threshold`; `loss_rows` (DAPO's dynamic sampling)
shrinks the mask every step uses; `train_policy=False` (value pretraining, `gae.value_pretrain`)
makes every iteration a critic-only one.

`old_logp` is the rollout's log-prob, produced by the same `score_responses`, so the
ratio is exactly 1 on the first minibatch: any drift between the rollout engine and the
trainer is a bug, and `train_logprobs` (written back to the store) makes it visible in SQL.
Dropout is switched off during the update for the same reason (as verl and OpenRLHF do).

Warm-up iterations (verl's `critic_warmup`) train the value function only: the policy's
parameters receive no step, so a fresh critic can catch up before it steers the policy.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gae.device import autocast
from gae.losses import AggMode, RatioLevel, explained_variance, positive_nll_loss
from gae.masked import masked_mean
from gae.ppo_steps import (
    ReduceFn,
    ScoreFn,
    joint_loss,
    loss_denominators,
    micro_batch_weights,
    micro_batches,
    minibatch_schedule,
    optimizer_step,
    policy_objective,
    prepare_advantages,
    reduce_metrics,
    score,
    score_rollout,
    value_objective,
)


class PPOConfig(BaseModel):
    """Settings of the PPO update. Defaults suit the small CPU models of the default pipeline."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(2, ge=1, description="Passes over the iteration's rollouts (PPO epochs).")
    minibatches: int = Field(
        4,
        ge=1,
        description="Minibatches per epoch; the B rows are split into this many (one optimizer step each).",
    )
    actor_lr: float = Field(1e-4, gt=0, description="AdamW learning rate of the policy parameters.")
    # 2e-3 rather than 5e-4: with the time-aware head, the default run's critic explained
    # variance went from -0.14 to +0.16 by the last iteration (bench/RESULTS.md, "Critic").
    critic_lr: float = Field(
        2e-3,
        gt=0,
        description="AdamW learning rate of the critic-only parameters (value head, separate trunk).",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the global gradient norm to this; None logs the norm without clipping."
    )
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant",
        description="Learning-rate decay over iterations (needs total_iterations for linear/cosine).",
    )
    lr_warmup_iterations: int = Field(
        0, ge=0, description="Iterations of linear learning-rate warm-up from 0."
    )
    min_lr_ratio: float = Field(
        0.0, ge=0, le=1, description="Floor of the decayed learning rate, as a fraction."
    )
    clip_low: float = Field(0.2, ge=0, description="Ratio clip below 1: r >= 1 - clip_low.")
    clip_high: float = Field(
        0.2, ge=0, description="Ratio clip above 1: r <= 1 + clip_high (DAPO clip-higher if larger)."
    )
    dual_clip: float | None = Field(
        None,
        gt=1,
        description="Dual-clip constant c for negative advantages (Ye et al. 2020); None disables.",
    )
    value_clip: float | None = Field(
        0.2, ge=0, description="Value clip range around the rollout's V; None disables."
    )
    vf_coef: float = Field(0.5, ge=0, description="Weight of the value loss in the joint loss.")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus weight (0: logged, not optimised).")
    loss_agg: AggMode = Field(
        "token-mean", description="Loss aggregation: token-mean, seq-mean-token-mean or seq-mean-token-sum."
    )
    whiten_advantages: bool = Field(
        True, description="Whiten advantages over the batch's action tokens first."
    )
    target_kl: float | None = Field(
        None,
        gt=0,
        description="Stop the iteration's update once a minibatch's k3 KL to the rollout policy exceeds this.",
    )
    critic_warmup_iterations: int = Field(
        0, ge=0, description="First iterations that train only the critic (the policy gets no step)."
    )
    score_before_update: bool = Field(
        True,
        description="Score the whole batch (no grad) before the first step, so train_logprobs are exactly the "
        "trainer's view of the rollout policy; False takes them from the first epoch's minibatches (cheaper, "
        "but later minibatches are scored after some steps).",
    )
    seed: int = Field(0, description="Seed of the minibatch permutations (with the iteration number).")
    bf16: bool = Field(
        False,
        description="bf16 autocast for the update's forward passes on CUDA (ignored on CPU); log-probs, "
        "values and losses stay float32. Set rollout.bf16 too, so the first ratio is 1 up to rounding.",
    )
    micro_batch_rows: int | None = Field(
        None,
        ge=1,
        description="Rows per forward/backward pass inside a minibatch (gradient accumulation, verl's "
        "micro batch): memory scales with it, the step does not change. None: the whole minibatch.",
    )
    # --- issue 15: the loss modes of GSPO and VAPO, and VC-PPO's value pretraining
    ratio_level: RatioLevel = Field(
        "token",
        description="Importance ratio of the clipped surrogate: token (PPO) or sequence (GSPO, arXiv "
        "2507.18071: the geometric mean of a response's token ratios, clipped per sequence). sequence "
        "defaults clip_low/clip_high to GSPO's 3e-4/4e-4 and loss_agg to seq-mean-token-mean unless set.",
    )
    positive_nll_coef: float = Field(
        0.0,
        ge=0,
        description="Weight of VAPO's positive-example LM loss (arXiv 2504.05118; 0.1 there): NLL of the "
        "tokens of responses whose score is >= positive_score_threshold, averaged over those tokens.",
    )
    positive_score_threshold: float = Field(
        1.0, description="A response is a positive example when its sequence score is >= this."
    )
    value_pretrain_iterations: int = Field(
        0,
        ge=0,
        description="Critic-only iterations before PPO (VC-PPO, arXiv 2503.01491), on rollouts of the frozen "
        "initial policy with lambda = 1 (Monte-Carlo) targets; not counted in `iterations`. Unlike "
        "critic_warmup_iterations (critic-only PPO iterations on the configured lambda, whose targets "
        "bootstrap from the untrained critic itself), the targets here do not depend on the critic.",
    )

    @model_validator(mode="after")
    def _gspo_defaults(self) -> PPOConfig:
        # GSPO's ratio is a geometric mean over a whole response: PPO's 0.2 would never clip it.
        # The paper's ranges and sequence-mean aggregation apply unless the user set them.
        if self.ratio_level == "sequence":
            unset = {"clip_low": 3e-4, "clip_high": 4e-4, "loss_agg": "seq-mean-token-mean"}
            for name, value in unset.items():
                if name not in self.model_fields_set:
                    setattr(self, name, value)  # now in model_fields_set: a reload keeps it
        return self


# Loss metrics that are aggregates under `loss_agg`: over micro batches they combine with the
# loss's weights; the others are means over action tokens and combine by token share, except
# SUM_METRICS, already divided by the minibatch's own denominator (they add up as they are).
AGG_METRICS = frozenset({"actor/pg_loss", "critic/vf_loss", "actor/entropy", "actor/kl_loss"})
SUM_METRICS = frozenset({"actor/positive_nll"})


def _default_score_fn() -> ScoreFn:
    from gae.models import score_responses

    return score_responses


def _param_groups(model: torch.nn.Module) -> tuple[list, list]:
    """(actor params, critic-only params). A model without the ActorCritic methods is all actor."""
    if hasattr(model, "actor_parameters") and hasattr(model, "critic_parameters"):
        actor = [p for p in model.actor_parameters() if p.requires_grad]
        seen = {id(p) for p in actor}
        critic = [p for p in model.critic_parameters() if p.requires_grad and id(p) not in seen]
        seen |= {id(p) for p in critic}
        # Anything else the model holds trains with the policy.
        actor += [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
        return actor, critic
    return [p for p in model.parameters() if p.requires_grad], []


def build_optimizer(model: torch.nn.Module, cfg: PPOConfig) -> torch.optim.AdamW:
    """AdamW with two parameter groups, `actor` and `critic` (critic-only parameters)."""
    actor, critic = _param_groups(model)
    groups = [{"params": actor, "lr": cfg.actor_lr, "base_lr": cfg.actor_lr, "name": "actor"}]
    if critic:
        groups.append({"params": critic, "lr": cfg.critic_lr, "base_lr": cfg.critic_lr, "name": "critic"})
    return torch.optim.AdamW(
        groups, lr=cfg.actor_lr, betas=cfg.adam_betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay
    )


def lr_factor(iteration: int, cfg: PPOConfig, total_iterations: int | None = None) -> float:
    """Multiplier of the base learning rates at `iteration` (0-based). A pure function of the
    iteration, so a resumed run needs no scheduler state."""
    if cfg.lr_warmup_iterations and iteration < cfg.lr_warmup_iterations:
        return (iteration + 1) / (cfg.lr_warmup_iterations + 1)
    if cfg.lr_schedule == "constant":
        return 1.0
    if total_iterations is None:
        raise ValueError(f"PPOConfig.lr_schedule={cfg.lr_schedule!r} needs total_iterations")
    span = max(1, total_iterations - cfg.lr_warmup_iterations)
    progress = min(1.0, max(0.0, (iteration - cfg.lr_warmup_iterations) / span))
    if cfg.lr_schedule == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay


def _check_inputs(batch, advantages: torch.Tensor, returns: torch.Tensor) -> None:
    shape = tuple(batch.action_mask.shape)
    for name, t in (("advantages", advantages), ("returns", returns)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"ppo_update: {name} must be a tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(
                f"ppo_update: {name} has shape {tuple(t.shape)}, the batch's action_mask {shape}"
            )
        if not torch.isfinite(t[batch.action_mask.bool().to(t.device)]).all():
            raise ValueError(f"ppo_update: {name} holds NaN or inf on action tokens")


def _rows(x, B: int, device, name: str = "loss_rows") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != (B,):
        raise ValueError(f"ppo_update: {name} must be a ({B},) tensor, got {getattr(x, 'shape', type(x))}")
    return x.to(device)


def ppo_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    cfg: PPOConfig,
    *,
    kl_coef: float = 0.0,
    kl_placement: str = "reward",
    kl_estimator: str = "k3",
    kl_clamp: float | None = 10.0,
    train_critic: bool = True,
    iteration: int = 0,
    total_iterations: int | None = None,
    score_fn: ScoreFn | None = None,
    reduce_sum: ReduceFn | None = None,
    scores: torch.Tensor | None = None,
    loss_rows: torch.Tensor | None = None,
    train_policy: bool = True,
    rank_rows: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[dict[str, float], torch.Tensor]:
    """One iteration's PPO update of `model` in place.

    Args:
        batch: gae.batch.RolloutBatch (its logprobs are the behaviour policy's, values the
            critic's at rollout time, ref_logprobs the reference policy's).
        advantages, returns: (B, T), 0 off `batch.action_mask` (gae.advantages output).
        kl_coef, kl_placement, kl_estimator, kl_clamp: with placement "loss" the KL to the
            reference (`gae.shaping.kl_per_token` with this estimator and clamp) is added to the
            loss with this weight; otherwise the KL is already in the rewards.
        train_critic: False for critic-free estimators (GRPO, RLOO, ...): no value loss (with a
            value head on the policy's trunk it would move the policy toward a meaningless
            target) and no critic warm-up.
        iteration, total_iterations: for the learning-rate schedule, the minibatch seed and
            the critic warm-up.
        score_fn: defaults to gae.models.score_responses (the rollout's own scorer).
        reduce_sum: for data-parallel callers, where `batch` is this rank's shard and every
            rank runs the same number of minibatches and micro batches: returns the sum of a
            tensor over ranks (e.g. `dist.all_reduce(t); return t`). It is applied to each
            minibatch's loss denominators (`loss_denominators`: every rank divides by the global
            action-token and non-empty-row counts), to the minibatch's metric partial sums (the
            target-KL stop and the logged numbers are global) and to the gradients before
            clipping (so do not also wrap the model in DDP, which would average them). None:
            this process holds the whole minibatch.
        scores: (B,) sequence scores; needed when `cfg.positive_nll_coef > 0` (rows scoring
            >= `cfg.positive_score_threshold` are VAPO's positive examples).
        loss_rows: (B,) bool, the rows that enter the losses (DAPO's dynamic sampling drops the
            rows of zero-variance groups: they carry no signal and would dilute the token
            mean); None: all. Whitening, denominators and every loss use only these rows;
            train_logprobs still covers every row. With no row left, no step is taken.
        train_policy: False trains the critic only (value pretraining): like a warm-up
            iteration, the policy's parameters take no step.
        rank_rows: data parallel with the whole `batch` on every rank (gae.distributed): maps
            a set of row indices to this rank's share of it (e.g. `idx.tensor_split(world)[rank]`).
            Every rank then walks the single-process minibatches and whitens over the whole
            batch, scores and backpropagates only its share, and `train_logprobs` (each row
            scored by one rank) are summed over ranks at the end: one step equals the single
            process's on the same minibatches. Needs `reduce_sum`.

    Returns:
        (metrics, train_logprobs): metrics with verl's names (floats); train_logprobs (B, T)
        float32 on the model's device (the caller copies it to the store): the trainer's
        log-probs of the rollout tokens before any step, 0 off the mask.
    """
    t_start = time.perf_counter()
    if kl_placement not in ("reward", "loss", "none"):
        raise ValueError(f"ppo_update: kl_placement must be 'reward', 'loss' or 'none', got {kl_placement!r}")
    score_fn = score_fn or _default_score_fn()
    _check_inputs(batch, advantages, returns)
    device = next(model.parameters()).device
    if batch.action_mask.device != device:
        batch = batch.to(device)
    action_mask = batch.action_mask.bool()  # every generated token: train_logprobs covers these
    B = batch.batch_size
    mask = action_mask if loss_rows is None else action_mask & _rows(loss_rows, B, device)[:, None]
    positive = None
    if cfg.positive_nll_coef > 0 and train_policy:
        if scores is None:
            raise ValueError("ppo_update: positive_nll_coef > 0 needs the batch's sequence scores (B,)")
        positive = mask & (_rows(scores, B, device, "scores") >= cfg.positive_score_threshold)[:, None]
    returns = returns.to(device=device, dtype=torch.float32)
    old_values = batch.values.float()
    old_logprobs = batch.logprobs.float()
    if not train_policy and not train_critic:
        raise ValueError("ppo_update: train_policy=False with train_critic=False would train nothing")
    warmup = train_critic and (not train_policy or iteration < cfg.critic_warmup_iterations)
    kl_in_loss = kl_placement == "loss" and kl_coef > 0

    factor = lr_factor(iteration, cfg, total_iterations)
    for group in optimizer.param_groups:
        group["lr"] = group.get("base_lr", group["lr"]) * factor
    actor_ids = {
        id(p) for g in optimizer.param_groups if g.get("name", "actor") == "actor" for p in g["params"]
    }
    all_params = [p for g in optimizer.param_groups for p in g["params"]]

    was_training = model.training
    model.eval()  # dropout off: ratio 1 at the first minibatch needs the rollout's exact forward
    metrics: dict[str, float] = {}

    # 1. score: the trainer's view of the rollout policy, before any step
    scoring = {"score_fn": score_fn, "micro_batch_rows": cfg.micro_batch_rows, "bf16": cfg.bf16}
    train_logprobs = torch.zeros(B, action_mask.shape[1], dtype=torch.float32, device=device)
    t0 = time.perf_counter()
    share = rank_rows or (lambda rows: rows)  # data parallel: this rank's rows of a row set
    if cfg.score_before_update:
        n_mb = min(cfg.minibatches, B)
        chunks = torch.arange(B, device=device).tensor_split(n_mb)
        score_rollout(model, batch, [c for c in map(share, chunks) if len(c)], train_logprobs, **scoring)
    metrics["timing_s/old_log_prob"] = time.perf_counter() - t0

    # 2. advantages: whitened over the batch's action tokens
    advantages = advantages.to(device=device, dtype=torch.float32)
    advantages = prepare_advantages(advantages, mask, whiten=cfg.whiten_advantages)

    scored = torch.zeros(B, dtype=torch.bool, device=device)  # rows with train_logprobs
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    steps = skipped = 0
    stopped = False
    first_ratio_max_dev = float("nan")
    t_update = time.perf_counter()
    schedule = minibatch_schedule(
        B,
        epochs=cfg.epochs,
        minibatches=cfg.minibatches,
        seed=cfg.seed * 1_000_003 + iteration,
        device=device,
    )
    if not bool(mask.any()):
        schedule = iter(())  # every row dropped (dynamic sampling): nothing to learn from
    for epoch, k, idx in schedule:
        idx = share(idx)
        optimizer.zero_grad(set_to_none=True)
        mb_metrics: dict[str, float] = defaultdict(float)
        total_loss = 0.0
        denoms = loss_denominators(
            mask[idx], reduce_sum, positive=positive[idx] if positive is not None else None
        )
        for mi in micro_batches(idx, cfg.micro_batch_rows):
            m = mask[mi]
            w_tok, w_agg = micro_batch_weights(m, denoms, cfg.loss_agg)
            with autocast(device, bf16=cfg.bf16):
                logp, values, entropy = score(score_fn, model, batch, mi, compute_entropy=True)
            logp, values, entropy = logp.float(), values.float(), entropy.float()
            if epoch == 0 and not cfg.score_before_update:
                train_logprobs[mi] = logp.detach().float()
                scored[mi] = True
            if epoch == 0 and k == 0:
                with torch.no_grad():
                    dev = (logp.detach() - old_logprobs[mi]).abs()
                    dev = float(torch.where(m, dev, torch.zeros_like(dev)).max())
                    first_ratio_max_dev = (
                        dev if math.isnan(first_ratio_max_dev) else max(first_ratio_max_dev, dev)
                    )
            # 3. policy loss (clipped surrogate, entropy bonus, KL when it sits in the loss)
            kl = (kl_coef, batch.ref_logprobs[mi].float(), kl_estimator, kl_clamp)
            pg, kl_term, chunk_m = policy_objective(
                logp,
                entropy,
                old_logprobs[mi],
                advantages[mi],
                m,
                clip_low=cfg.clip_low,
                clip_high=cfg.clip_high,
                dual_clip=cfg.dual_clip,
                entropy_coef=cfg.entropy_coef,
                agg=cfg.loss_agg,
                kl=kl if kl_in_loss and not warmup else None,
                ratio_level=cfg.ratio_level,
            )
            # 4. value loss
            vf, vf_m = value_objective(
                values,
                old_values[mi],
                returns[mi],
                m,
                clip=cfg.value_clip,
                vf_coef=cfg.vf_coef,
                agg=cfg.loss_agg,
            )
            chunk_m.update(vf_m)
            loss = joint_loss(pg, kl_term, vf, train_policy=not warmup, train_critic=train_critic)
            scaled = loss * w_agg
            if positive is not None and not warmup:
                # VAPO's positive-example NLL: already divided by the minibatch's positive tokens
                nll, nll_m = positive_nll_loss(logp, positive[mi], denominator=denoms.positive_tokens)
                scaled = scaled + cfg.positive_nll_coef * nll
                chunk_m.update(nll_m)
            scaled.backward()
            total_loss += float(scaled.detach()) if positive is not None else float(loss.detach()) * w_agg
            # the aggregated losses add up like the loss; the per-token rates by token share
            for key, val in chunk_m.items():
                w = 1.0 if key in SUM_METRICS else w_agg if key in AGG_METRICS else w_tok
                mb_metrics[key] += val * w
        mb_metrics["actor/total_loss"] = total_loss
        if reduce_sum is not None:
            mb_metrics = reduce_metrics(mb_metrics, reduce_sum, device)
        if cfg.target_kl is not None and not warmup and mb_metrics["actor/approx_kl"] > cfg.target_kl:
            # Checked before stepping (stricter than cleanrl's end-of-epoch check): no step
            # is taken on a minibatch that has already left the trust region.
            optimizer.zero_grad(set_to_none=True)
            stopped = True
            break
        # 5. step (warm-up: the policy's parameters take none)
        grad_norm, stepped = optimizer_step(
            optimizer,
            all_params,
            frozen=actor_ids if warmup else set(),
            max_grad_norm=cfg.max_grad_norm,
            reduce_sum=reduce_sum,
        )
        steps += stepped
        skipped += not stepped
        mb_metrics["actor/grad_norm"] = grad_norm
        for key, val in mb_metrics.items():
            sums[key] += val
            counts[key] += 1
    if rank_rows is not None:
        scored = reduce_sum(scored.to(torch.int64)) > 0  # rows another rank scored
    if not cfg.score_before_update and not bool(scored.all()):
        # an early stop left rows of the first epoch unvisited: score them now (no grad), so the
        # store's train_logprob is the trainer's view, not a 0.0 that reads as probability 1
        rest = share((~scored).nonzero().squeeze(1))
        score_rollout(model, batch, (rest,) if len(rest) else (), train_logprobs, **scoring)
    if rank_rows is not None:
        train_logprobs = reduce_sum(train_logprobs)  # each row from the one rank that scored it
    t_done = time.perf_counter()
    model.train(was_training)

    metrics.update({key: sums[key] / counts[key] for key in sums})
    lrs = {g.get("name", "actor"): g["lr"] for g in optimizer.param_groups}
    metrics["actor/lr"] = lrs.get("actor", 0.0)
    metrics["critic/lr"] = lrs.get("critic", lrs.get("actor", 0.0))
    metrics["actor/kl_coef"] = float(kl_coef)
    metrics["actor/update_steps"] = float(steps)
    metrics["actor/skipped_steps"] = float(skipped)
    metrics["actor/early_stopped"] = float(stopped)
    metrics["actor/critic_warmup"] = float(warmup)
    metrics["actor/first_minibatch_max_abs_log_ratio"] = first_ratio_max_dev
    if loss_rows is not None:
        metrics["actor/loss_rows_frac"] = float(mask.any(-1).sum()) / max(1, int(action_mask.any(-1).sum()))
    if positive is not None:
        metrics["actor/positive_frac"] = float(positive.any(-1).sum()) / max(1, int(mask.any(-1).sum()))
    with torch.no_grad():
        diff = (train_logprobs.exp() - old_logprobs.exp()).abs()
        diff = torch.where(action_mask, diff, torch.zeros_like(diff))
        metrics["training/rollout_probs_diff_max"] = float(diff.max()) if diff.numel() else 0.0
        metrics["training/rollout_probs_diff_mean"] = float(masked_mean(diff, action_mask))
    # One joint backward updates actor and critic together; the time is reported under the
    # part that trained (warm-up iterations train only the critic).
    metrics["timing_s/update_critic" if warmup else "timing_s/update_actor"] = t_done - t_update
    metrics["timing_s/update"] = time.perf_counter() - t_start
    train_logprobs = torch.where(action_mask, train_logprobs, torch.zeros_like(train_logprobs))
    return metrics, train_logprobs.detach().float()


def data_metrics(
    batch,
    *,
    scores: torch.Tensor,
    token_rewards: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    kl: torch.Tensor | None = None,
) -> dict[str, float]:
    """Per-iteration statistics of the data (verl's `compute_data_metrics` names).

    scores: (B,) sequence scores; token_rewards, advantages, returns, kl: (B, T).
    """
    # Computed where the tensors live; only the scalars come back, in one transfer.
    mask = batch.action_mask.bool()
    dev = mask.device
    scores = scores.detach().float().to(dev)
    f = {
        "token_rewards": token_rewards,
        "advantages": advantages,
        "returns": returns,
        "values": batch.values,
    }
    f = {k: v.detach().float().to(dev) for k, v in f.items()}
    nan = torch.tensor(float("nan"), device=dev)

    def stats(x: torch.Tensor) -> list[torch.Tensor]:
        return [x.mean(), x.max(), x.min()] if x.numel() else [nan, nan, nan]

    names, values = [], []

    def add(name: str, v: torch.Tensor) -> None:
        names.append(name)
        values.append(v.reshape(()).float())

    for k, v in zip(("mean", "max", "min"), stats(scores), strict=True):
        add(f"critic/score/{k}", v)
    add("critic/rewards/mean", torch.where(mask, f["token_rewards"], 0.0).sum(-1).mean())
    for name in ("advantages", "returns", "values"):
        for k, v in zip(("mean", "max", "min"), stats(f[name][mask]), strict=True):
            add(f"critic/{name}/{k}", v)
    lengths = mask.sum(-1).float()
    for k, v in zip(("mean", "max", "min"), stats(lengths), strict=True):
        add(f"response_length/{k}", v)
    add("prompt_length/mean", batch.prompt_mask.sum(-1).float().mean())
    if kl is not None:
        add("actor/reward_kl_penalty", masked_mean(kl.detach().float().to(dev), mask))
    out = dict(zip(names, torch.stack(values).tolist(), strict=True))
    out["critic/vf_explained_var"] = explained_variance(f["values"], f["returns"], mask)
    out["response_length/clip_ratio"] = sum(r == "length" for r in batch.finish_reasons) / max(
        1, batch.batch_size
    )
    return out


def timing_metrics(timings: dict[str, float], *, n_tokens: int) -> dict[str, float]:
    """`timing_s/<phase>` for each measured phase and `perf/throughput` (prompt + response
    tokens per second of the whole step). `timings["step"]` is the iteration's wall time."""
    out = {f"timing_s/{k}": float(v) for k, v in timings.items()}
    step = timings.get("step")
    if step:
        out["perf/throughput"] = n_tokens / step
        other = step - sum(v for k, v in timings.items() if k != "step")
        out["timing_s/other"] = max(0.0, other)
    return out

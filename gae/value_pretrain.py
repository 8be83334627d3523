"""Value pretraining (VC-PPO, Yuan et al. 2025, arXiv 2503.01491, section 4.1): fit the critic on
rollouts of the frozen initial policy with Monte-Carlo targets before PPO starts.

VC-PPO's diagnosis of PPO's collapse on long responses: a critic initialised from a reward
model (or, here, a fresh value head) is biased toward the end of the response, and GAE with
lam < 1 bootstraps its targets from that biased critic, so the bias never washes out and the
early tokens' advantages are wrong. The fix is to fit the critic first, on targets that do
not depend on it:

    for each pretraining iteration k (the policy frozen at its initial weights):
        batch      <- rollouts of the initial policy
        V          <- critic(batch)                                    (no grad)
        R_t        <- GAE returns with lam = 1: sum_{j >= t} gamma^{j-t} r_j (+ bootstrap)
        EV_before  <- explained_variance(V, R)
        critic-only PPO update on (V, R)                               (the policy takes no step)
        EV_after   <- explained_variance(critic(batch), R)

How it differs from `ppo.critic_warmup_iterations` (verl's `critic_warmup`): a warm-up
iteration is one of the run's PPO iterations with the policy's step switched off; its
targets use the configured lam (0.95 by default), i.e. they bootstrap from the critic being
trained, and it spends one of `iterations`. Value pretraining runs before iteration 0, is not
counted in `iterations`, and its targets are lam = 1 returns, independent of the critic.

`fit_critic` is one pretraining iteration on a batch; `pretrain_critic` loops it over fresh
rollouts (drawn by a callable, so the sampling, scoring and logging stay with the caller,
`tasks.value_pretrain`) with a checkpoint after every iteration: an interrupted pretraining
resumes from its last completed iteration, and logs each iteration's metrics once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from gae.advantages import compute_gae
from gae.losses import explained_variance
from gae.ppo_steps import score_rows
from gae.train import PPOConfig, ScoreFn, _default_score_fn, ppo_update


def critic_values(model, batch, *, score_fn: ScoreFn | None = None, micro_batch_rows: int | None = None):
    """(values (B, T), last_values (B,)) of `batch` under `model`'s current critic, no grad."""
    score_fn = score_fn or _default_score_fn()
    B = batch.batch_size
    vals, lasts = [], []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for idx in torch.arange(B).split(micro_batch_rows or max(1, B)):
            out = score_rows(score_fn, model, batch, idx)
            vals.append(out.values.float())
            lasts.append(out.last_values.float())
    model.train(was_training)
    return torch.cat(vals), torch.cat(lasts)


def fit_critic(
    model,
    optimizer: torch.optim.Optimizer,
    batch,
    rewards: torch.Tensor,
    cfg: PPOConfig,
    *,
    gamma: float,
    truncated: torch.Tensor | None = None,
    iteration: int = 0,
    score_fn: ScoreFn | None = None,
) -> tuple[dict[str, float], torch.Tensor]:
    """One value-pretraining iteration on `batch` (a RolloutBatch of the frozen policy) with
    per-token `rewards` (B, T): lam = 1 targets, a critic-only `ppo_update`, explained
    variance before and after. `truncated` (B,) bool: rows whose targets bootstrap from the
    critic's value after their last token (the run's `bootstrap_truncated`); None: all
    terminal. The batch's values are replaced by the current critic's (the value clip's
    anchor). Returns (`value_pretrain/*` metrics, the returns (B, T) the critic was fitted to)."""
    values, last_values = critic_values(
        model, batch, score_fn=score_fn, micro_batch_rows=cfg.micro_batch_rows
    )
    batch.values = values.to(batch.values.dtype)
    last_value = None
    if truncated is not None:
        last_value = torch.where(truncated.to(last_values.device), last_values, torch.zeros_like(last_values))
    mask = batch.action_mask.bool()
    # lam = 1 for both: the targets are Monte-Carlo returns (the advantages are not used)
    adv, ret = compute_gae(rewards.float(), values, mask, gamma=gamma, lam=1.0, last_value=last_value)
    ev_before = explained_variance(values, ret, mask)
    # a constant learning rate and no warm-up schedule: those belong to the PPO iterations
    cfg = cfg.model_copy(
        update={"lr_schedule": "constant", "lr_warmup_iterations": 0, "critic_warmup_iterations": 0}
    )
    metrics, _ = ppo_update(
        model, optimizer, batch, adv, ret, cfg, train_policy=False, iteration=iteration, score_fn=score_fn
    )
    after, _ = critic_values(model, batch, score_fn=score_fn, micro_batch_rows=cfg.micro_batch_rows)
    return {
        "value_pretrain/explained_var_before": ev_before,
        "value_pretrain/explained_var_after": explained_variance(after, ret, mask),
        "value_pretrain/vf_loss": metrics.get("critic/vf_loss", float("nan")),
        "value_pretrain/returns_mean": float(ret[mask].mean()) if bool(mask.any()) else 0.0,
        "value_pretrain/update_steps": metrics["actor/update_steps"],
    }, ret


# One pretraining iteration's inputs: (batch, rewards (B, T), truncated (B,) bool or None).
SampleFn = Callable[[int], tuple]
# (iteration, metrics, only_new): log an iteration's metrics; only_new when they may have been
# logged already (the iteration checkpointed just before an interruption).
LogFn = Callable[[int, dict, bool], None]


def pretrain_critic(
    model,
    optimizer: torch.optim.Optimizer,
    cfg: PPOConfig,
    *,
    iterations: int,
    sample: SampleFn,
    gamma: float,
    state_dir: str | Path,
    log: LogFn | None = None,
    score_fn: ScoreFn | None = None,
) -> dict[str, float]:
    """`iterations` value-pretraining iterations (`fit_critic` on `sample(k)`, k = 0, 1, ...),
    resumable. Returns the last iteration's metrics plus `value_pretrain/explained_var_first`
    (before any fitting).

    After iteration k the critic, the optimizer state, the RNGs and the metrics so far are
    checkpointed under `state_dir/checkpoints` (`gae.checkpoint`, written atomically), then
    `log(k, metrics, False)` is called. A call that finds a checkpoint of iteration j restores
    it into `model` and `optimizer`, logs iteration j's metrics again with only_new=True (the
    interruption may have come between the checkpoint and the log) and continues at j + 1;
    `sample(k)` must return the same batch for the same k (rollout seeds derived from k), so
    the resumed fit equals an uninterrupted one.
    """
    from gae.checkpoint import (
        checkpoint_dir,
        latest_checkpoint,
        load_checkpoint,
        prune_checkpoints,
        save_checkpoint,
    )

    if iterations < 1:
        raise ValueError(f"pretrain_critic: iterations must be >= 1, got {iterations}")
    state_dir = Path(state_dir)
    start, first, metrics = 0, None, {}
    resumed = latest_checkpoint(state_dir)
    if resumed is not None:
        state = load_checkpoint(resumed, model=model, optimizer=optimizer)
        start, first, metrics = state["iteration"] + 1, state["extra"]["first"], state["extra"]["metrics"]
        if log is not None:
            log(state["iteration"], metrics, True)
    for k in range(start, iterations):
        batch, rewards, truncated = sample(k)
        metrics, _ = fit_critic(
            model,
            optimizer,
            batch,
            rewards,
            cfg,
            gamma=gamma,
            truncated=truncated,
            iteration=k,
            score_fn=score_fn,
        )
        first = metrics["value_pretrain/explained_var_before"] if first is None else first
        save_checkpoint(
            checkpoint_dir(state_dir, k),
            model=model,
            optimizer=optimizer,
            iteration=k,
            extra={"first": first, "metrics": metrics},
        )
        prune_checkpoints(state_dir, keep=1)
        if log is not None:
            log(k, metrics, False)
    return {**metrics, "value_pretrain/explained_var_first": first}

"""Prefect task: shape scores into per-token rewards (KL included) and estimate advantages.

Runs on the configured device (`gae.device.resolve_device`): the GAE kernels pick their
backend from it (numba on CPU, Triton on CUDA).
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

ADVANTAGES_FILE = "advantages.safetensors"


@task(name="compute-advantages")
def compute_advantages(
    batch_dir: str,
    scores_path: str,
    advantage_cfg: dict,
    shaping_cfg: dict,
    *,
    kl_coef: float,
    device: str = "auto",
) -> dict:
    """Write `<batch_dir>/advantages.safetensors` with token_rewards, kl, advantages, returns (B, T).

    advantage_cfg: the fields of the run config's advantage section (`gae.config.AdvantageConfig`:
    estimator by name, gamma, lam, lam_critic, lam_schedule, length_alpha, horizon, p,
    bootstrap_truncated, dynamic_sampling); shaping_cfg: a `gae.shaping.ShapingConfig` as a dict;
    kl_coef: the KL controller's current value.
    With dynamic_sampling "drop" the file also holds `loss_rows` (B,) uint8: the rows outside
    zero-variance groups, which the trainer keeps in its losses. The file's metadata `metrics`
    (JSON) carries the iteration's advantage statistics for the trainer to log.
    Returns {"path", "mean_kl" (per-sequence KL summed over tokens, batch mean: what the
    adaptive controller tracks), "n_rollouts", "n_action_tokens", "metrics"}.
    """
    import json

    import torch
    from safetensors.torch import save_file

    from gae import handoff
    from gae.advantages import length_adaptive_lam, zero_variance_groups
    from gae.batch import RolloutBatch
    from gae.device import resolve_device, to_host
    from gae.estimators import estimate, parse_estimator
    from gae.fsutil import atomic_path
    from gae.rewards import ScoreTable
    from gae.shaping import ShapingConfig, score_without_overlong, sequence_kl, shape_rewards

    dev = resolve_device(device)
    batch = RolloutBatch.load(batch_dir, device=dev)
    scores = ScoreTable.load(scores_path)
    shaping = ShapingConfig.model_validate(shaping_cfg)
    known = {
        "estimator",
        "gamma",
        "lam",
        "lam_critic",
        "lam_schedule",
        "length_alpha",
        "horizon",
        "p",
        "bootstrap_truncated",
        "dynamic_sampling",
    }
    unknown = set(advantage_cfg) - known
    if unknown:
        raise ValueError(f"advantage_cfg has unknown fields {sorted(unknown)}; valid: {sorted(known)}")
    est = parse_estimator(advantage_cfg.get("estimator", "gae"))

    rewards, kl = shape_rewards(scores.total.to(dev), batch, shaping, kl_coef)
    mask = batch.action_mask.bool()
    last_value = None
    if advantage_cfg.get("bootstrap_truncated", False):
        cut = torch.tensor([f == "length" for f in batch.finish_reasons], device=dev)
        last_value = torch.where(cut, batch.last_values.float(), 0.0)
    lam = advantage_cfg.get("lam", 0.95)
    metrics: dict[str, float] = {}
    if advantage_cfg.get("lam_schedule", "fixed") == "length_adaptive":
        lam = length_adaptive_lam(mask, advantage_cfg.get("length_alpha", 0.05))  # (B,), VAPO
        metrics["advantages/lam_actor_mean"] = float(lam.mean())
        metrics["advantages/lam_actor_min"] = float(lam.min())
    adv, ret = estimate(
        est,
        rewards=rewards,
        mask=mask,
        values=batch.values.float() if est.needs_critic else None,
        gamma=advantage_cfg.get("gamma", 1.0),
        lam=lam,
        lam_critic=advantage_cfg.get("lam_critic"),
        last_value=last_value,
        group_ids=batch.group_ids,
        horizon=advantage_cfg.get("horizon"),
        p=advantage_cfg.get("p"),
    )
    path = Path(batch_dir) / ADVANTAGES_FILE
    tensors = {"token_rewards": rewards, "kl": kl, "advantages": adv, "returns": ret}
    tensors = {k: v.detach().float() for k, v in tensors.items()}
    if advantage_cfg.get("dynamic_sampling", "off") == "drop":
        # DAPO: groups whose sequence scores are all equal get zero group-baseline advantage (near
        # zero with KL in the rewards); the trainer leaves them out of its losses. Judged on the
        # scores before the overlong length penalty, as DAPO judges on accuracy, not on
        # length- or KL-shaped sums (gae.shaping.score_without_overlong).
        flat = zero_variance_groups(score_without_overlong(scores).to(dev), batch.group_ids.to(dev))  # (B,)
        tensors["loss_rows"] = (~flat).to(torch.uint8)
        n_groups = int(torch.unique(batch.group_ids).numel())
        n_flat = int(torch.unique(batch.group_ids.to(dev)[flat]).numel())
        metrics["dynamic_sampling/dropped_groups_frac"] = n_flat / max(1, n_groups)
        metrics["dynamic_sampling/dropped_rows_frac"] = float(flat.float().mean()) if flat.numel() else 0.0
    with atomic_path(path) as tmp:
        # the estimator rides along: the trainer reads whether to fit the critic from it
        meta = {
            "estimator": est.value,
            "needs_critic": str(est.needs_critic).lower(),
            "metrics": json.dumps(metrics),
        }
        save_file(to_host(tensors).wait(), str(tmp), metadata=meta)  # the store's copy of these columns
    if handoff.enabled_for(dev):
        handoff.put(path, tensors)  # the trainer in this process reads them without a round trip
    return {
        "path": str(path),
        "mean_kl": float(sequence_kl(kl, mask).mean()),
        "n_rollouts": batch.batch_size,
        "n_action_tokens": int(mask.sum()),
        "metrics": metrics,
    }


def advantages_meta(path: str | Path) -> dict[str, str]:
    """The estimator that wrote `path` ({"estimator", "needs_critic": "true"|"false", "metrics":
    JSON}; empty for files written before it was recorded). Reads the header only."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def load_advantages(path: str | Path, device="cpu") -> dict:
    """The tensors `compute_advantages` wrote: token_rewards, kl, advantages, returns (B, T),
    on `device` (from `gae.handoff` when this process wrote them there)."""
    from safetensors.torch import load_file

    from gae import handoff

    if handoff.enabled_for(device):
        cached = handoff.get(path, device)
        if cached is not None:
            return cached
    return load_file(str(path), device=str(device))

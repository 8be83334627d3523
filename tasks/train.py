"""Prefect task: one iteration's PPO update, from files to a checkpoint. Paths and ids in and out.

Reads the policy (the previous iteration's checkpoint, with its optimizer, RNG and KL-controller
state, or the base model at iteration 0), the rollout batch, its scores and advantages; runs
`gae.train.ppo_update`; writes the trainer's log-probs (for the store's train_logprob column)
and the new checkpoint atomically.

No retries: an update is not idempotent in general (a retry after a crash between the
optimizer step and the checkpoint would be fine, since it restarts from the previous
checkpoint, but a retry that re-ran on an already-updated in-memory model would apply the
step twice). Instead the task is *resumable*: when the iteration's checkpoint and log-prob
file already exist it returns them without training again, so a rerun of the flow never
double-applies a step.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import task

TRAIN_LOGPROBS_FILE = "train_logprobs.safetensors"
KEEP_CHECKPOINTS = 3  # the resume point, the one before it (a crash before `complete_iteration`), the newest


def _result(ckpt: Path, lp_path: Path, state: dict) -> dict:
    extra = state.get("extra") or {}
    return {
        "checkpoint": str(ckpt),
        "model_dir": str(ckpt / "policy"),
        "kl_coef": extra.get("next_kl_coef"),
        "metrics": extra.get("metrics", {}),
        "train_logprobs": str(lp_path),
    }


@task(name="ppo-update")
def train_iteration(
    data_dir: str,
    run_id: str,
    iteration: int,
    policy_dir: str,
    batch_dir: str,
    advantages_path: str,
    ppo_cfg: dict,
    shaping_cfg: dict,
    *,
    kl_coef: float,
    mean_kl: float | None = None,
    total_iterations: int | None = None,
    device: str = "auto",
) -> dict:
    """Returns {"checkpoint", "model_dir" (the updated policy), "kl_coef" (for the next
    iteration, after the KL controller saw `mean_kl`), "metrics" (floats, verl names),
    "train_logprobs" (path of a safetensors file with `train_logprobs` (B, T))}."""
    return update_iteration(
        data_dir, run_id, iteration, policy_dir, batch_dir, advantages_path, ppo_cfg, shaping_cfg,
        kl_coef=kl_coef, mean_kl=mean_kl, total_iterations=total_iterations, device=device,
    )  # fmt: skip


def update_iteration(
    data_dir: str,
    run_id: str,
    iteration: int,
    policy_dir: str,
    batch_dir: str,
    advantages_path: str,
    ppo_cfg: dict,
    shaping_cfg: dict,
    *,
    kl_coef: float,
    mean_kl: float | None = None,
    total_iterations: int | None = None,
    device: str = "auto",
    reduce_sum=None,
    rank_rows=None,
    writer: bool = True,
) -> dict:
    """`train_iteration`'s work. With `reduce_sum` and `rank_rows` (`gae.train.ppo_update`) it is
    one rank of a data-parallel update (`cluster.executor: ray`): every rank reads the same
    files and takes the same step, and only the `writer` saves the log-probs and checkpoint."""
    from safetensors.torch import save_file

    from gae.batch import RolloutBatch
    from gae.checkpoint import checkpoint_dir, load_checkpoint, prune_checkpoints, save_checkpoint
    from gae.device import resolve_device, to_host
    from gae.fsutil import atomic_path
    from gae.models import load_model
    from gae.paths import DataDir
    from gae.rewards import ScoreTable
    from gae.shaping import ShapingConfig, build_kl_controller
    from gae.train import PPOConfig, build_optimizer, data_metrics, ppo_update
    from tasks.advantages import advantages_meta, load_advantages
    from tasks.rewards import SCORES_FILE

    dd = DataDir.resolve(data_dir)
    run_dir = dd.run_dir(run_id)
    ckpt = checkpoint_dir(run_dir, iteration)
    lp_path = dd.iteration_dir(run_id, iteration) / TRAIN_LOGPROBS_FILE
    if (ckpt / "state.json").exists() and lp_path.exists():
        return _result(ckpt, lp_path, json.loads((ckpt / "state.json").read_text()))

    t0 = time.perf_counter()
    cfg = PPOConfig.model_validate(ppo_cfg)
    shaping = ShapingConfig.model_validate(shaping_cfg)
    dev = resolve_device(device)
    prev = checkpoint_dir(run_dir, iteration - 1) if iteration > 0 else None
    resume_from = prev if prev is not None and (prev / "state.json").exists() else None
    model = load_model(resume_from / "policy" if resume_from else policy_dir, device=dev)
    optimizer = build_optimizer(model, cfg)
    kl_ctl = build_kl_controller(shaping.kl)
    if resume_from is not None:
        # Optimizer moments, RNG states and the KL controller continue exactly where they were.
        load_checkpoint(resume_from, optimizer=optimizer, kl_controller=kl_ctl)
    kl_ctl.value = float(kl_coef)  # the coefficient this iteration's rewards were shaped with

    batch = RolloutBatch.load(batch_dir, device=dev)
    adv = load_advantages(advantages_path, device=dev)
    meta = advantages_meta(advantages_path)
    scores_file = Path(batch_dir) / SCORES_FILE
    scores = ScoreTable.load(scores_file) if scores_file.exists() else None
    loss_rows = adv["loss_rows"].bool() if "loss_rows" in adv else None  # DAPO dynamic sampling
    t_load = time.perf_counter() - t0
    metrics, train_lp = ppo_update(
        model,
        optimizer,
        batch,
        adv["advantages"],
        adv["returns"],
        cfg,
        kl_coef=float(kl_coef),
        kl_placement=shaping.kl.placement,
        kl_estimator=shaping.kl.estimator,
        kl_clamp=shaping.kl.clamp,
        # critic-free estimators (GRPO, RLOO, ...) leave the value function alone
        train_critic=meta.get("needs_critic", "true") == "true",
        iteration=iteration,
        total_iterations=total_iterations,
        scores=scores.total.to(dev) if scores is not None else None,
        loss_rows=loss_rows,
        reduce_sum=reduce_sum,
        rank_rows=rank_rows,
    )
    metrics.update(json.loads(meta.get("metrics", "{}")))  # the advantage step's statistics
    if scores is not None:
        metrics.update(
            data_metrics(
                batch,
                scores=scores.total,
                token_rewards=adv["token_rewards"],
                advantages=adv["advantages"],
                returns=adv["returns"],
                kl=adv.get("kl"),
            )
        )
        for name, vals in scores.components.items():
            metrics[f"reward/{name}/mean"] = float(vals.float().mean())
    next_kl = kl_ctl.update(mean_kl, batch.batch_size) if mean_kl is not None else kl_ctl.value
    metrics["actor/kl_coef"] = float(kl_coef)
    n_tokens = int(batch.action_mask.sum() + batch.prompt_mask.sum())
    upd = metrics.get("timing_s/update", 0.0)
    metrics["perf/update_tokens_per_s"] = n_tokens * cfg.epochs / upd if upd else 0.0

    if not writer:
        return {
            "checkpoint": str(ckpt),
            "model_dir": str(ckpt / "policy"),
            "kl_coef": next_kl,
            "metrics": metrics,
        }
    t1 = time.perf_counter()
    with atomic_path(lp_path) as tmp:
        save_file(to_host({"train_logprobs": train_lp}).wait(), str(tmp))  # the store's copy
    metrics["timing_s/load"] = t_load
    extra = {"metrics": metrics, "next_kl_coef": next_kl, "run_id": run_id}
    save_checkpoint(
        ckpt,
        model=model,
        iteration=iteration,
        optimizer=optimizer,
        kl_controller=kl_ctl,
        config={"ppo": cfg.model_dump(mode="json"), "shaping": shaping.model_dump(mode="json")},
        extra=extra,
    )
    prune_checkpoints(run_dir, keep=KEEP_CHECKPOINTS)
    metrics["timing_s/checkpoint"] = time.perf_counter() - t1
    return {
        "checkpoint": str(ckpt),
        "model_dir": str(ckpt / "policy"),
        "kl_coef": next_kl,
        "metrics": metrics,
        "train_logprobs": str(lp_path),
    }

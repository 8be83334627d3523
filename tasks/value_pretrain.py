"""Prefect task: value pretraining before PPO iteration 0 (VC-PPO; `gae.value_pretrain`).

`ppo.value_pretrain_iterations` times: sample rollouts of the frozen initial policy, score
them, shape rewards, and fit the critic on lambda = 1 returns (`gae.value_pretrain.fit_critic`).
Writes the policy with its pretrained critic to `<run>/value-pretrain/policy` and logs
`value_pretrain/*` to the run's MLflow run (step = pretraining iteration), explained variance
before and after each iteration among them. Resumable: a finished pretraining is reused, an
interrupted one continues from its last completed iteration (`gae.value_pretrain.pretrain_critic`
checkpoints each under `<run>/value-pretrain/checkpoints`) without logging a point twice.
"""

from __future__ import annotations

import json

from prefect import task

DONE_FILE = "value_pretrain.json"
# Rollout seeds of pretraining iteration k: far from the PPO iterations' (seed * 100_003 + it).
SEED_OFFSET = 90_001


@task(name="value-pretrain")
def value_pretrain_task(data_dir: str, run: dict, base: dict, policy_dir: str, cfg: dict) -> dict:
    """Returns {"model_dir" (policy_dir itself when `cfg["ppo"]["value_pretrain_iterations"]` is 0),
    "metrics" (the last iteration's, plus explained_var_first: before any fitting)}.

    run: start_run's result (run_id, mlflow_run_id); base: pretrain_task's result (model_dir
    of the reference policy, tokenizer, corpus); cfg: the resolved pipeline config as a dict.
    """
    from gae.paths import DataDir

    n = int(cfg["ppo"].get("value_pretrain_iterations", 0))
    if n == 0:
        return {"model_dir": policy_dir, "metrics": {}}
    out = DataDir.resolve(data_dir).run_dir(run["run_id"]) / "value-pretrain"
    done = out / DONE_FILE
    if done.exists():
        return json.loads(done.read_text())

    import torch

    from gae.batch import RolloutBatch
    from gae.device import resolve_device
    from gae.fsutil import atomic_write_json
    from gae.models import load_model, save_model
    from gae.rewards import ScoreTable
    from gae.shaping import ShapingConfig, shape_rewards
    from gae.tracking import Tracker
    from gae.train import PPOConfig, build_optimizer
    from gae.value_pretrain import pretrain_critic
    from tasks.rewards import score_rollouts
    from tasks.rollout import rollout_task

    dev = resolve_device(cfg["device"])
    ppo = PPOConfig.model_validate(cfg["ppo"])
    shaping = ShapingConfig.model_validate(cfg["shaping"])
    model = load_model(policy_dir, device=dev)
    optimizer = build_optimizer(model, ppo)
    tracker = Tracker.start(
        data_dir,
        run_id=run["run_id"],
        experiment=cfg["registry"]["experiment"],
        mlflow_run_id=run["mlflow_run_id"],
    )

    def sample(k: int):
        # the initial policy samples every batch: only the critic changes
        batch_dir = rollout_task.fn(
            data_dir,
            policy_dir,
            base["model_dir"],
            base["tokenizer"],
            cfg["rollout"],
            n_prompts=cfg["prompts_per_iteration"],
            seed=cfg["seed"] * 100_003 + SEED_OFFSET + k,
            out_dir=str(out / f"iter-{k:05d}" / "batch"),
            device=cfg["device"],
            corpus=base.get("corpus"),
        )
        scores = ScoreTable.load(score_rollouts.fn(batch_dir, cfg["rewards"]))
        batch = RolloutBatch.load(batch_dir, device=dev)
        rewards, _ = shape_rewards(scores.total.to(dev), batch, shaping, shaping.kl.coef)
        truncated = None
        if cfg["advantages"].get("bootstrap_truncated", False):
            truncated = torch.tensor([f == "length" for f in batch.finish_reasons], device=dev)
        return batch, rewards, truncated

    def log(k: int, metrics: dict, only_new: bool) -> None:
        tracker.log_metrics(metrics, step=k, only_new=only_new)

    metrics = pretrain_critic(
        model,
        optimizer,
        ppo,
        iterations=n,
        sample=sample,
        gamma=cfg["advantages"].get("gamma", 1.0),
        state_dir=out,
        log=log,
    )
    model_dir = save_model(model, out / "policy", extra={"value_pretrain": metrics})
    result = {"model_dir": str(model_dir), "metrics": metrics}
    atomic_write_json(done, result)
    return result

"""Prefect task: score a stored rollout batch with the configured reward components."""

from __future__ import annotations

from pathlib import Path

from prefect import task

SCORES_FILE = "scores.safetensors"


@task(name="score-rollouts")
def score_rollouts(batch_dir: str, reward_cfg: dict) -> str:
    """Load `<batch_dir>` (gae.batch.RolloutBatch), score it, write `<batch_dir>/scores.safetensors`.

    reward_cfg: a `gae.rewards.RewardConfig` as a dict. Returns the scores file's path. No
    retries: a user's Python or SQL reward may not be idempotent.
    """
    from gae.batch import RolloutBatch
    from gae.rewards import RewardConfig, score_batch

    cfg = RewardConfig.model_validate(reward_cfg)
    batch = RolloutBatch.load(batch_dir)
    return str(score_batch(batch, cfg).save(Path(batch_dir) / SCORES_FILE))

"""Prefect task: register the run's final policy in the MLflow model registry.

Retries are safe here: a registration is keyed by its source (`<run_id>:<iteration>`), so
a retry after a half-finished attempt finds the version the first attempt created instead
of adding another, and alias moves are idempotent.
"""

from __future__ import annotations

from prefect import task

from tasks.retry import unless_disk_full


def _eval_score(data_dir: str, run: dict) -> tuple[float, int]:
    """(eval/reward/mean, iteration) of the last completed iteration in the run state."""
    from gae.paths import DataDir
    from gae.runstate import RunState

    state = RunState.load(DataDir.resolve(data_dir).runs, run["run_name"])
    if state is None or not state.history:
        raise ValueError(f"run {run.get('run_name')!r} has no completed iteration to register")
    last = max(state.history, key=lambda h: h.get("iteration", -1))
    score = last.get("eval/reward/mean")
    if score is None:
        raise ValueError(
            f"run {run.get('run_name')!r} iteration {last.get('iteration')} has no eval/reward/mean"
        )
    return float(score), int(last["iteration"])


BASELINE_METRIC = "eval/reward_baseline"  # logged by rl-pipeline before iteration 0


def _baseline_score(data_dir: str, run: dict) -> float | None:
    """The pretrained policy's eval reward, as the run logged it to MLflow (a resumed run has
    it too); None when the run has no MLflow run or never logged one."""
    from gae.tracking import get_client

    if not run.get("mlflow_run_id"):
        return None
    metrics = get_client(data_dir).get_run(run["mlflow_run_id"]).data.metrics
    value = metrics.get(BASELINE_METRIC)
    return float(value) if value is not None else None


@task(name="register-policy", retries=2, retry_delay_seconds=2, retry_condition_fn=unless_disk_full)
def register_policy(
    data_dir: str,
    run: dict,
    policy_dir: str,
    tokenizer_path: str,
    cfg: dict,
    eval_score: float | None = None,
    iteration: int | None = None,
) -> dict:
    """Log `policy_dir` as a pyfunc model under the run's MLflow run and register it as a new
    version of `cfg["registry"]["model_name"]`; `candidate` moves to it, `champion` only if
    its eval score beats the champion's and is not below the run's baseline (the pretrained
    policy's eval reward, `eval/reward_baseline` in the run's MLflow metrics).
    `eval_score`/`iteration` default to the last completed iteration's `eval/reward/mean` in
    the run state. Returns the Registration."""
    from gae.paths import DataDir
    from gae.registry import log_and_register

    baseline = _baseline_score(data_dir, run)
    if eval_score is None or iteration is None:
        score, it = _eval_score(data_dir, run)
        eval_score = score if eval_score is None else eval_score
        iteration = it if iteration is None else iteration
    dd = DataDir.resolve(data_dir)
    reg_cfg = cfg.get("registry", {})
    reg = log_and_register(
        policy_dir,
        reg_cfg.get("model_name", "gae-policy"),
        eval_score,
        tokenizer_path=tokenizer_path,
        data_dir=dd,
        mlflow_run_id=run.get("mlflow_run_id"),
        experiment=reg_cfg.get("experiment", "gaeflow"),
        config=cfg,
        baseline_score=baseline,
        source=f"{run['run_id']}:{iteration}",
        tags={
            "gae.run_id": run["run_id"],
            "gae.iteration": str(iteration),
            "gae.parquet.tokens": str(dd.tokens / f"run_id={run['run_id']}"),
            "gae.parquet.rollouts": str(dd.rollouts / f"run_id={run['run_id']}"),
        },
    )
    return reg.to_dict()

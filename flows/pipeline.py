"""`rl-pipeline`: corpus -> DuckDB -> pretraining -> [rollouts -> rewards -> advantages ->
store -> PPO -> log -> evaluation -> registration] x iterations. Wiring only: every step is
a task in `tasks/`, and tasks pass paths and ids, never tensors or frames.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote

from gae.config import PipelineConfig
from tasks.advantages import compute_advantages
from tasks.distributed import stage_tasks, worker_pool
from tasks.ingest import ingest_task
from tasks.pipeline import (
    complete_iteration,
    evaluate_policy_task,
    finish_run,
    log_iteration,
    publish_iteration,
    start_run,
)
from tasks.pretrain import pretrain_task
from tasks.register import register_policy
from tasks.value_pretrain import value_pretrain_task


class _Clock:
    """Wall time of each stage (task call included), for the `timing_s/*` metrics."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}

    def __call__(self, name, fn, *args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t
        return out


@flow(name="rl-iteration", log_prints=True)
def rl_iteration(
    cfg: dict,
    data_dir: str,
    run: dict,
    iteration: int,
    base: dict,
    policy_dir: str,
    kl_coef: float,
    pool: str | None = None,
) -> dict:
    """One PPO iteration; returns the new checkpoint, the next KL coefficient and the metrics.
    With a worker pool (`cluster.executor: ray`) the stages are their sharded twins."""
    from gae.paths import DataDir

    dd = DataDir.resolve(data_dir)
    it_dir = dd.iteration_dir(run["run_id"], iteration)
    stage = str(it_dir / "stage")  # store files wait here until the iteration is complete
    clock = _Clock()
    run_ = stage_tasks(pool, iteration, cfg.get("cluster"))
    batch_dir = clock(
        "rollout",
        run_.rollout,
        data_dir,
        policy_dir,
        base["model_dir"],
        base["tokenizer"],
        cfg["rollout"],
        n_prompts=cfg["prompts_per_iteration"],
        seed=cfg["seed"] * 100_003 + iteration,
        out_dir=str(it_dir / "batch"),
        device=cfg["device"],
        corpus=base.get("corpus"),
    )
    scores_path = clock("reward", run_.reward, batch_dir, cfg["rewards"])
    adv = clock(
        "adv",
        compute_advantages,
        batch_dir,
        scores_path,
        cfg["advantages"],
        cfg["shaping"],
        kl_coef=kl_coef,
        device=cfg["device"],
    )
    stored = clock(
        "store",
        run_.store,
        stage,
        run["run_id"],
        iteration,
        batch_dir,
        scores_path,
        adv["path"],
        base["tokenizer"],
    )
    trained = clock(
        "update",
        run_.update,
        data_dir,
        run["run_id"],
        iteration,
        policy_dir,
        batch_dir,
        adv["path"],
        cfg["ppo"],
        cfg["shaping"],
        kl_coef=kl_coef,
        mean_kl=adv["mean_kl"],
        total_iterations=cfg["iterations"],
        device=cfg["device"],
    )
    clock("store", run_.fill, stage, run["run_id"], iteration, batch_dir, trained["train_logprobs"])
    ev = clock(
        "eval",
        evaluate_policy_task,
        data_dir,
        trained["model_dir"],
        base["tokenizer"],
        cfg["rewards"],
        cfg["eval"],
        cfg["device"],
        corpus=base.get("corpus"),
    )
    metrics = {**trained["metrics"], **{f"eval/{k}/mean": v for k, v in ev["components"].items()}}
    metrics["eval/reward/mean"] = ev["reward_mean"]
    clock.timings["step"] = time.perf_counter() - clock.t0
    clock(
        "log",
        log_iteration,
        data_dir,
        run,
        iteration,
        metrics,
        ev["samples"],
        cfg["registry"]["experiment"],
        timings=clock.timings,
        n_tokens=stored.get("token_rows", 0),
        batch_dir=batch_dir,
    )
    clock("store", publish_iteration, data_dir, stage, run["run_id"], iteration)
    summary = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    summary["iteration"] = iteration
    summary["stored_tokens"] = stored.get("token_rows")
    summary["timing_s/iteration"] = time.perf_counter() - clock.t0
    complete_iteration(data_dir, run["run_name"], iteration, summary)
    return {
        "checkpoint": trained["checkpoint"],
        "model_dir": trained["model_dir"],
        "kl_coef": trained["kl_coef"],
        "metrics": summary,
    }


@flow(name="rl-pipeline", log_prints=True)
def rl_pipeline(config: PipelineConfig | None = None) -> dict:
    """The whole workflow on one data directory; a rerun of the same command resumes."""
    from gae.device import configure_threads
    from gae.lock import writer_lock
    from gae.paths import DataDir

    configure_threads("auto")  # one intra-op thread on <= 2 cores: a second one makes small models slower
    config = config or PipelineConfig()
    cfg = config.model_dump(mode="json")
    dd = DataDir.resolve(config.data_dir).ensure()
    data_dir = str(dd.root)
    logger = get_run_logger()
    from flows.deployments import lock_hint

    with (
        writer_lock(dd.lock, what=f"rl-pipeline run {config.run_name}", **lock_hint()),
        # executor=ray: the workers start first, so a cluster problem fails before any work
        worker_pool(cfg["cluster"], config.device, dd.runs / f"{config.run_name}.workers.json") as pool,
    ):
        summary = ingest_task(data_dir, config.corpus, cfg["ingest"], skip_unchanged=True)
        # the run's own corpus: a data directory may also hold corpora of earlier runs
        corpus = summary.get("corpus_id")
        base = pretrain_task(data_dir, cfg["model"], cfg["pretrain"], device=config.device, corpus=corpus)
        base = {**base, "corpus": corpus}
        run = start_run(data_dir, cfg, resume=config.resume)
        logger.info(
            "run %s (%s), iterations %d..%d",
            run["run_id"],
            "resumed" if run["resumed"] else "new",
            run["start_iteration"],
            config.iterations - 1,
        )
        policy_dir = run["model_dir"] or base["model_dir"]
        kl_coef = run["kl_coef"] if run["kl_coef"] is not None else config.shaping.kl.coef
        history = []
        try:
            if run["start_iteration"] == 0:
                # The pretrained policy's eval reward: the number every iteration is compared with.
                ev = evaluate_policy_task(
                    data_dir,
                    base["model_dir"],
                    base["tokenizer"],
                    cfg["rewards"],
                    cfg["eval"],
                    config.device,
                    corpus=corpus,
                )
                base = {**base, "eval_reward": ev["reward_mean"]}
                log_iteration(
                    data_dir,
                    run,
                    0,
                    {"eval/reward_baseline": ev["reward_mean"]},
                    ev["samples"],
                    cfg["registry"]["experiment"],
                    label="baseline",
                )
                # VC-PPO: the critic first fits the frozen policy's returns (ppo.value_pretrain_iterations)
                policy_dir = value_pretrain_task(data_dir, run, base, policy_dir, cfg)["model_dir"]
            # quote(): plain values, not tracked inputs. The policy directory and KL coefficient
            # are a subflow's results, and Prefect would record them (and any object whose id
            # it recycles) as flow-run inputs, which the UI's Task Runs tab cannot read (issue 17).
            for it in range(run["start_iteration"], config.iterations):
                out = rl_iteration(*map(quote, (cfg, data_dir, run, it, base, policy_dir, kl_coef, pool)))
                policy_dir, kl_coef = out["model_dir"], out["kl_coef"]
                history.append(out["metrics"])
            registered = None
            if config.registry.enabled:
                registered = register_policy(*map(quote, (data_dir, run, policy_dir, base["tokenizer"], cfg)))
            finish_run(*map(quote, (data_dir, run, cfg["registry"]["experiment"], "finished")))
        except BaseException:
            try:
                finish_run(*map(quote, (data_dir, run, cfg["registry"]["experiment"], "failed")))
            except Exception as cleanup:  # e.g. the same full disk: the run's own error is the one to report
                logger.warning("could not mark run %s failed: %s", run["run_id"], cleanup)
            raise
    return {
        "run_id": run["run_id"],
        "mlflow_run_id": run["mlflow_run_id"],
        "ingest": summary,
        "base": base,
        "iterations": history,
        "registered": registered,
    }


if __name__ == "__main__":
    rl_pipeline()

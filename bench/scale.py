"""Scale-out on Ray (issue 13): what Ray costs and what a second worker buys, ratios measured in
one run on one data directory.

    python bench/scale.py                     # the default preset (about 15 minutes on 2 cores)
    python bench/scale.py --preset smoke      # a quick check of the script

1. Ray overhead: the preset's pipeline, 2 iterations, with executor=local, then executor=ray
   with 1 and with 2 workers (ingest and pretraining are cached after the first run). Ratio of
   the last iteration's wall time (`timing_s/iteration`, workers warm) to the local one; the Ray
   start (ray.init, placement, workers up: `start-workers`) is reported apart, paid once a run.
2. Rollout throughput: the sharded rollout stage on the pretrained policy with 1 and 2 workers
   (one torch thread each), generated tokens per second of the stage's wall time (Prefect and
   Ray included), median of --repeat after a warm-up call; the local rollout task for reference.
3. The PPO update on one iteration's files with 1 and 2 workers (gloo) and the local update,
   median of --repeat. On 2 cores two ranks plus the driver share the cores: reported as is.

A GPU figure needs one GPU per worker (gpus_per_worker=1); workers sharing one GPU measure
nothing about scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _env(tmp: Path) -> None:
    os.environ["PREFECT_HOME"] = str(tmp / "prefect-home")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # the bench's Ray listens on 127.0.0.1 only


def pipeline_runs(preset: str, data: Path, iterations: int) -> dict:
    """{label: (per-iteration wall seconds, Ray start seconds or None, last iteration's stage timings)}."""
    from flows.pipeline import rl_pipeline
    from gae.config import load_config
    from gae.tracking import get_client

    out = {}
    for label, extra in (
        ("local", []),
        ("ray, 1 worker", ["cluster.executor=ray", "cluster.workers=1"]),
        ("ray, 2 workers", ["cluster.executor=ray", "cluster.workers=2"]),
    ):
        name = "scale-" + label.replace(", ", "-").replace(" ", "")
        cfg = load_config(
            preset=preset,
            overrides=[f"data_dir={data}", f"run_name={name}", f"iterations={iterations}", "registry.enabled=false", *extra],
        )  # fmt: skip
        result = rl_pipeline(cfg)
        walls = [h["timing_s/iteration"] for h in result["iterations"]]
        info = data / "runs" / f"{name}.workers.json"
        start = json.loads(info.read_text())["started_s"] if info.exists() and extra else None
        metrics = get_client(data).get_run(result["mlflow_run_id"]).data.metrics
        stages = {k.removeprefix("timing_s/"): v for k, v in metrics.items() if k.startswith("timing_s/")}
        out[label] = (walls, start, stages, result)
    return out


def stage_benchmarks(result: dict, data: Path, preset: str, repeat: int) -> dict:
    """Rollout tokens/s and update seconds: local, 1 worker, 2 workers (one Ray instance)."""
    import torch
    from prefect import flow
    from prefect.logging import disable_run_logger

    from gae.batch import RolloutBatch
    from gae.config import load_config
    from gae.distributed.cluster import import_ray, start_pool
    from gae.distributed.config import ClusterConfig
    from tasks.distributed import sharded_rollout, sharded_update
    from tasks.rollout import rollout_task
    from tasks.train import train_iteration

    cfg = load_config(preset=preset).model_dump(mode="json")
    base = result["base"]
    run_dir = data / "runs" / result["run_id"]
    batch_dir, adv = (
        str(run_dir / "iter-00001" / "batch"),
        str(run_dir / "iter-00001" / "batch" / "advantages.safetensors"),
    )
    rollout_args = (str(data), base["model_dir"], base["model_dir"], base["tokenizer"], cfg["rollout"])
    rollout_kw = {
        "n_prompts": cfg["prompts_per_iteration"],
        "seed": 7,
        "device": "cpu",
        "corpus": base.get("corpus"),
    }
    update_args = (batch_dir, adv, cfg["ppo"], cfg["shaping"])
    update_kw = {"kl_coef": 0.05, "device": "cpu"}
    scratch = Path(tempfile.mkdtemp(prefix="gae-scale-"))
    calls = iter(range(10**6))

    def rollout(pool=None) -> float:
        out = str(scratch / f"b{next(calls)}")
        t = time.perf_counter()
        if pool is None:
            with disable_run_logger():
                path = rollout_task.fn(*rollout_args, out_dir=out, **rollout_kw)
        else:
            path = sharded_rollout(*rollout_args, out_dir=out, **rollout_kw, pool=pool)
        wall = time.perf_counter() - t
        return RolloutBatch.load(path).meta["generated_tokens"] / wall

    def update(pool=None) -> float:
        args = (str(scratch), f"u{next(calls)}", 0, base["model_dir"], *update_args)
        t = time.perf_counter()
        if pool is None:
            with disable_run_logger():
                train_iteration.fn(*args, **update_kw)
        else:
            sharded_update(*args, **update_kw, pool=pool)
        return time.perf_counter() - t

    @flow(name="scale-stage")
    def measure(fn, pool=None) -> float:
        """Median of `repeat` calls after a warm-up (models loaded, imports done), in one flow
        run: the stage's own task runs count, a flow run's start does not (the pipeline pays it
        once per iteration for every stage together)."""
        fn(pool)
        return statistics.median(fn(pool) for _ in range(repeat))

    torch.set_num_threads(1)
    out = {"rollout": {"local": measure(rollout)}, "update": {"local": measure(update)}}
    ray = import_ray(local_start=True)
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        for w in (1, 2):
            pool = start_pool(ClusterConfig(executor="ray", workers=w), device="cpu")
            try:
                out["rollout"][w] = measure(rollout, pool.id)
                out["update"][w] = measure(update, pool.id)
            finally:
                pool.close()
    finally:
        ray.shutdown()
    rows = RolloutBatch.load(batch_dir).batch_size
    out["rows"] = rows
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="gae-bench-scale-"))
    _env(tmp)
    from gae.device import configure_threads

    configure_threads("auto")
    runs = pipeline_runs(args.preset, tmp / "data", args.iterations)
    stages = stage_benchmarks(runs["local"][3], tmp / "data", args.preset, args.repeat)

    local_walls = runs["local"][0]
    print(
        f"# bench/scale.py --preset {args.preset}: {args.iterations} iterations per run, {os.cpu_count()} CPUs"
    )
    print("\n## Iteration wall time (the last iteration, workers warm)\n")
    print("| executor | iteration s (each) | last vs local | Ray start s |")
    print("| --- | --- | ---: | ---: |")
    for label, (walls, start, _, _) in runs.items():
        each = ", ".join(f"{w:.1f}" for w in walls)
        print(
            f"| {label} | {each} | {walls[-1] / local_walls[-1]:.2f}x | {'' if start is None else f'{start:.1f}'} |"
        )
    names = sorted(
        {
            k
            for _, _, st, _ in runs.values()
            for k in st
            if k in ("rollout", "reward", "adv", "store", "update", "eval", "log", "step")
        }
    )
    print("\n| stage (last iteration, s) | " + " | ".join(runs) + " |")
    print("| --- |" + " ---: |" * len(runs))
    for n in names:
        print(
            f"| {n} | " + " | ".join(f"{st.get(n, float('nan')):.2f}" for _, _, st, _ in runs.values()) + " |"
        )
    r, u = stages["rollout"], stages["update"]
    print(f"\n## Stages on their own ({stages['rows']} rows, median of {args.repeat} after a warm-up)\n")
    print("| stage | local | 1 worker | 2 workers | 2 vs 1 worker |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| rollout tokens/s | {r['local']:.0f} | {r[1]:.0f} | {r[2]:.0f} | {r[2] / r[1]:.2f}x |")
    print(f"| PPO update s | {u['local']:.2f} | {u[1]:.2f} | {u[2]:.2f} | {u[1] / u[2]:.2f}x |")
    print(
        f"\nRay overhead, 1 worker vs local, last iteration: {runs['ray, 1 worker'][0][-1] / local_walls[-1]:.2f}x (target <= 1.2x)"
    )
    print(f"rollout throughput, 2 workers vs 1: {r[2] / r[1]:.2f}x (target >= 1.6x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

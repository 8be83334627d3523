"""Scale-out on Ray (issue 13): what Ray costs and what a second worker buys, ratios measured in
one run on one data directory, the executors interleaved (this machine's load drifts by 2x
within minutes: back-to-back runs would measure the drift).

    python bench/scale.py                     # the default preset (about 20 minutes on 2 cores)
    python bench/scale.py --preset smoke      # a quick check of the script

Set-up: the preset's pipeline once (ingest, pretraining), then one local Ray instance holding
two pools, of 1 and of 2 workers (one torch thread each); `ray.init` and each pool's start
(placement, worker processes, models not yet loaded) are reported apart: paid once per run.

1. Iterations: three runs of the preset (local, ray with 1 worker, ray with 2 workers) advance
   iteration by iteration in turn (`rl_iteration`, the flow the pipeline runs, order rotated
   each iteration). Median wall time (`timing_s/iteration`) of the iterations after the first
   (the first loads models and imports in fresh workers: reported on its own).
2. Rollout throughput: the rollout stage on the pretrained policy, local task vs the sharded
   twin on 1 and 2 workers, generated tokens per second of the stage's wall time (Prefect and
   Ray included); a warm-up round, then the median of --repeat rounds, executors interleaved.
3. The PPO update on one iteration's files: local vs 1 and 2 workers (gloo), the same way.

On 2 cores the driver, two workers and everything else on the machine share the cores: the
figures are what this machine gives, not what two free cores would. A GPU figure needs one
GPU per worker (gpus_per_worker=1); workers sharing one GPU measure nothing about scaling.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LABELS = ("local", "1 worker", "2 workers")


def _env(tmp: Path) -> None:
    os.environ["PREFECT_HOME"] = str(tmp / "prefect-home")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # the bench's Ray listens on 127.0.0.1 only


def rotated(i: int) -> list[str]:
    return [LABELS[(i + k) % len(LABELS)] for k in range(len(LABELS))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="gae-bench-scale-"))
    _env(tmp)

    import torch
    from prefect import flow
    from prefect.logging import disable_run_logger

    from flows.pipeline import rl_iteration, rl_pipeline
    from gae.batch import RolloutBatch
    from gae.config import load_config
    from gae.device import configure_threads
    from gae.distributed.cluster import import_ray, start_pool
    from gae.distributed.config import ClusterConfig
    from tasks.distributed import sharded_rollout, sharded_update
    from tasks.pipeline import start_run
    from tasks.rollout import rollout_task
    from tasks.train import train_iteration

    configure_threads("auto")
    torch.set_num_threads(1)  # the workers' count: the local runs compute the same way
    data = tmp / "data"
    load_start = os.getloadavg()[0]
    setup = rl_pipeline(
        load_config(
            preset=args.preset,
            overrides=[f"data_dir={data}", "run_name=scale-setup", "iterations=1", "registry.enabled=false"],
        )
    )
    base = setup["base"]

    t = time.perf_counter()
    ray = import_ray(local_start=True)
    ray.init(address="local", num_cpus=3, include_dashboard=False)
    t_init = time.perf_counter() - t
    pools, t_pool = {"local": None}, {}
    for label, w in (("1 worker", 1), ("2 workers", 2)):
        t = time.perf_counter()
        pools[label] = start_pool(ClusterConfig(executor="ray", workers=w), device="cpu").id
        t_pool[label] = time.perf_counter() - t

    def config(label: str) -> dict:
        name = "scale-" + label.replace(" ", "")
        cluster = [] if label == "local" else ["cluster.executor=ray", f"cluster.workers={label[0]}"]
        overrides = [f"data_dir={data}", f"run_name={name}", f"iterations={args.iterations}", *cluster]
        return load_config(preset=args.preset, overrides=overrides).model_dump(mode="json")

    @flow(name="scale-iterations")
    def iterations() -> dict[str, list[float]]:
        cfgs = {label: config(label) for label in LABELS}
        runs = {label: start_run(str(data), cfg, resume=False) for label, cfg in cfgs.items()}
        state = {label: (base["model_dir"], cfg["shaping"]["kl"]["coef"]) for label, cfg in cfgs.items()}
        walls: dict[str, list[float]] = {label: [] for label in LABELS}
        for it in range(args.iterations):
            for label in rotated(it):
                policy, kl = state[label]
                out = rl_iteration(cfgs[label], str(data), runs[label], it, base, policy, kl, pools[label])
                state[label] = (out["model_dir"], out["kl_coef"])
                walls[label].append(out["metrics"]["timing_s/iteration"])
        return walls

    walls = iterations()

    cfg = config("local")
    run_dir = data / "runs" / setup["run_id"]
    batch_dir = str(run_dir / "iter-00000" / "batch")
    adv = str(run_dir / "iter-00000" / "batch" / "advantages.safetensors")
    scratch = Path(tempfile.mkdtemp(prefix="gae-scale-"))
    calls = iter(range(10**6))

    def rollout(label: str) -> float:
        a = (str(data), base["model_dir"], base["model_dir"], base["tokenizer"], cfg["rollout"])
        kw = {
            "n_prompts": cfg["prompts_per_iteration"],
            "seed": 7,
            "device": "cpu",
            "corpus": base.get("corpus"),
        }
        out = str(scratch / f"b{next(calls)}")
        t = time.perf_counter()
        if pools[label] is None:
            with disable_run_logger():
                path = rollout_task.fn(*a, out_dir=out, **kw)
        else:
            path = sharded_rollout(*a, out_dir=out, **kw, pool=pools[label])
        return RolloutBatch.load(path).meta["generated_tokens"] / (time.perf_counter() - t)

    def update(label: str) -> float:
        a = (
            str(scratch),
            f"u{next(calls)}",
            0,
            base["model_dir"],
            batch_dir,
            adv,
            cfg["ppo"],
            cfg["shaping"],
        )
        t = time.perf_counter()
        if pools[label] is None:
            with disable_run_logger():
                train_iteration.fn(*a, kl_coef=0.05, device="cpu")
        else:
            sharded_update(*a, kl_coef=0.05, device="cpu", pool=pools[label])
        return time.perf_counter() - t

    @flow(name="scale-stages")
    def stages() -> dict:
        out = {}
        for name, fn in (("rollout", rollout), ("update", update)):
            rounds = [{label: fn(label) for label in rotated(r)} for r in range(args.repeat + 1)]
            out[name] = {label: statistics.median(r[label] for r in rounds[1:]) for label in LABELS}
        return out

    st = stages()
    load_end = os.getloadavg()[0]
    ray.shutdown()

    warm = {label: statistics.median(w[1:] or w) for label, w in walls.items()}
    rows = RolloutBatch.load(batch_dir).batch_size
    print(
        f"# bench/scale.py --preset {args.preset} --iterations {args.iterations} --repeat {args.repeat}: "
        f"{os.cpu_count()} CPUs, load average {load_start:.1f} at the start, {load_end:.1f} at the end"
    )
    print(
        f"\nRay start: ray.init {t_init:.1f} s; pool of 1 worker {t_pool['1 worker']:.1f} s, of 2 {t_pool['2 workers']:.1f} s"
    )
    print(f"\n## Iterations ({rows} rows each; median of iterations 1..{args.iterations - 1})\n")
    print("| executor | first iteration s | later iterations s (each) | median | vs local |")
    print("| --- | ---: | --- | ---: | ---: |")
    for label in LABELS:
        each = ", ".join(f"{w:.1f}" for w in walls[label][1:])
        print(
            f"| {label} | {walls[label][0]:.1f} | {each} | {warm[label]:.1f} | {warm[label] / warm['local']:.2f}x |"
        )
    r, u = st["rollout"], st["update"]
    print(f"\n## Stages on their own ({rows} rows; median of {args.repeat} rounds after a warm-up round)\n")
    print("| stage | local | 1 worker | 2 workers | 1 worker vs local | 2 workers vs 1 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| rollout tokens/s | {r['local']:.0f} | {r['1 worker']:.0f} | {r['2 workers']:.0f} | "
        f"{r['1 worker'] / r['local']:.2f}x | {r['2 workers'] / r['1 worker']:.2f}x |"
    )
    print(
        f"| PPO update s | {u['local']:.2f} | {u['1 worker']:.2f} | {u['2 workers']:.2f} | "
        f"{u['1 worker'] / u['local']:.2f}x | {u['1 worker'] / u['2 workers']:.2f}x |"
    )
    print(
        f"\nRay overhead, 1 worker vs local iteration: {warm['1 worker'] / warm['local']:.2f}x (target <= 1.2x)"
    )
    print(f"rollout throughput, 2 workers vs 1: {r['2 workers'] / r['1 worker']:.2f}x (target >= 1.6x)")
    print(f"PPO update, 2 workers vs 1 (speed-up): {u['1 worker'] / u['2 workers']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Prefect tasks of `cluster.executor: ray`: the worker pool, and the sharded twins of the
pipeline's stages.

A twin takes the arguments of the local task it stands in for, plus `pool` (the worker pool's
id) and `iteration`. It starts its stage on every worker at once and maps one `shard` task run
per worker (`rollout-sample[0]`, `rollout-sample[1]`, ...), which waits for that worker's part
and logs its rows and seconds: the shard work shows in the Prefect UI under the stage. Paths
and ids in and out; the tensors move between the workers and this process through Ray.

    stage            twin                 what each worker does
    rollout          sharded_rollout      samples, then scores, whole chunks (bit-identical batch)
    score-rollouts   sharded_rewards      the reward components of its rows
    store-iteration  sharded_store        writes part-k of the tokens and rollouts files
    ppo-update       sharded_update       its share of every minibatch; gradients summed over ranks
    fill-train-...   sharded_fill         fills train_logprob in its part
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace

from prefect import get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE


@task(name="start-workers", cache_policy=NO_CACHE)
def start_workers(cluster_cfg: dict, device: str = "auto", info_path: str | None = None) -> str:
    """Start or join Ray and place the workers (gae.distributed.cluster.start_pool); writes the
    pool's table (rank, pid, host, device) to `info_path` (JSON). Returns the pool id."""
    from gae.distributed.cluster import start_pool
    from gae.distributed.config import ClusterConfig
    from gae.fsutil import atomic_write_json

    t0 = time.perf_counter()
    pool = start_pool(ClusterConfig.model_validate(cluster_cfg), device=device, log=get_run_logger().info)
    if info_path is not None:
        Path(info_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            info_path,
            {"pool": pool.id, "started_s": round(time.perf_counter() - t0, 3), "workers": pool.infos},
        )
    return pool.id


@task(name="stop-workers", cache_policy=NO_CACHE)
def stop_workers(pool: str) -> None:
    from gae.distributed.cluster import _POOLS

    found = _POOLS.get(pool)
    if found is not None:
        found.close()


@contextmanager
def worker_pool(cluster_cfg: dict, device: str = "auto", info_path=None) -> Iterator[str | None]:
    """The run's worker pool id for `cluster.executor: ray` (None for local), stopped on the way out."""
    if cluster_cfg.get("executor", "local") != "ray":
        yield None
        return
    pool = start_workers(cluster_cfg, device, str(info_path) if info_path is not None else None)
    try:
        yield pool
    finally:
        try:
            stop_workers(pool)
        finally:
            # idempotent: stops the workers even where the task could not run (a cancelled flow)
            stop_workers.fn(pool)


@task(name="shard", task_run_name="{stage}[{rank}]", cache_policy=NO_CACHE)
def shard(pool: str, call: str, rank: int, stage: str) -> dict:
    """Wait for worker `rank`'s part of a stage; returns (and logs) its scalar results."""
    from gae.distributed.cluster import get_pool

    out = get_pool(pool).wait(call, rank)
    summary = {k: v for k, v in out.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    get_run_logger().info("%s on worker %d: %s", stage, rank, summary)
    return summary


def run_sharded(pool_id: str, method: str, per_rank: dict[int, tuple], *, stage: str, iteration=None) -> list:
    """Start `method` on the ranks of `per_rank`, one `shard` task run each; results in rank order."""
    from gae.distributed.cluster import get_pool

    pool = get_pool(pool_id)
    call = pool.submit(method, per_rank, what=stage, iteration=iteration)
    futures = shard.map(unmapped(pool_id), unmapped(call), pool.ranks(call), unmapped(stage))
    futures.wait()
    for f in futures:
        f.result()  # the first failure, as raised on the worker (or WorkerDied)
    return pool.results(call)


def _n_rows(batch_dir: str) -> int:
    return len(json.loads((Path(batch_dir) / "batch.json").read_text())["rollout_ids"])


@task(name="rollout")
def sharded_rollout(
    data_dir: str | None,
    policy_dir: str,
    ref_dir: str,
    tokenizer_path: str,
    rollout_cfg: dict,
    *,
    out_dir: str,
    n_prompts: int | None = None,
    seed: int = 0,
    split: str = "train",
    prompt_ids: list[str] | None = None,
    prompts_path: str | None = None,
    device: str = "auto",
    corpus: str | None = None,
    pool: str,
    iteration: int | None = None,
) -> str:
    """`tasks.rollout.rollout_task` on the workers: the same batch, bit for bit
    (gae.distributed.rollout), saved to `out_dir` by this process. `device` is each worker's."""
    import torch

    from gae.distributed.cluster import get_pool
    from gae.distributed.rollout import assemble_batch, plan_rows, split_chunks, widths
    from gae.rollout import RolloutConfig, resolve_batch_size
    from gae.tokenizer import load_tokenizer
    from tasks.rollout import batch_key, load_prompts, saved_batch

    cfg = RolloutConfig.model_validate({**rollout_cfg, "seed": seed})
    prompts = load_prompts(data_dir, n_prompts, seed, split, prompt_ids, prompts_path, corpus)
    key = batch_key(policy_dir, ref_dir, tokenizer_path, cfg, prompts)
    out = Path(out_dir)
    if saved_batch(out, key):
        return str(out)
    t0 = time.perf_counter()
    plan = plan_rows(prompts, cfg)
    tag = uuid.uuid4().hex[:8]
    workers = get_pool(pool)
    if isinstance(cfg.batch_size, int) or not workers.infos[0]["device"].startswith("cuda"):
        batch_size = resolve_batch_size(None, cfg, prompt_len=0, device=torch.device("cpu"))
    else:  # auto on GPU workers: what rank 0's free memory allows, as the local run would size it
        texts = [{"prompt": p["prompt"]} for p in prompts]
        batch_size = workers.run(
            "chunk_rows", {0: (policy_dir, tokenizer_path, cfg.model_dump(), texts)}, what="rollout"
        )[0]
    shards = split_chunks(len(plan), batch_size, workers.size)
    if sum(1 for s in shards if s) < workers.size:
        get_run_logger().info(
            "rollout: %d rows in chunks of %d keep %d of %d workers busy; rollout.batch_size <= %d uses them all",
            len(plan), batch_size, sum(1 for s in shards if s), workers.size, -(-len(plan) // workers.size),
        )  # fmt: skip
    per_rank, texts_of = {}, {}
    for k, chunks in enumerate(shards):
        if not chunks:
            continue
        texts = sorted({plan[r][0] for ch in chunks for r in ch})  # global prompt indices
        local = {g: n for n, g in enumerate(texts)}
        rows = [[(local[plan[r][0]], plan[r][2]) for r in ch] for ch in chunks]
        per_rank[k] = (
            tag,
            policy_dir,
            tokenizer_path,
            cfg.model_dump(),
            [{"prompt": prompts[g]["prompt"]} for g in texts],
            rows,
        )
        texts_of[k] = texts
    sampled = run_sharded(pool, "sample", per_rank, stage="rollout-sample", iteration=iteration)
    t_gen = time.perf_counter() - t0
    chunks = [c for s in sampled for c in s["chunks"]]  # ranks hold consecutive chunks
    P, T = widths(chunks)
    pad_id = load_tokenizer(tokenizer_path).pad_id
    args = (tag, policy_dir, ref_dir, cfg.model_dump(), P, T, pad_id)
    scored = run_sharded(
        pool, "score", dict.fromkeys(per_rank, args), stage="rollout-score", iteration=iteration
    )
    truncated = {texts_of[k][i] for k, s in zip(per_rank, sampled, strict=True) for i in s["truncated"]}
    batch = assemble_batch(
        prompts,
        cfg,
        chunks,
        [c for s in scored for c in s["chunks"]],
        pad_id=pad_id,
        truncated=len(truncated),
        seconds=time.perf_counter() - t0,
        # the slowest worker's scoring is the stage's critical path
        timing={"gen": t_gen, **{k: max(s["timing"][k] for s in scored) for k in ("values", "ref")}},
        batch_size=batch_size,
        decode=sampled[0]["decode"],
    )
    batch.meta.update(
        {
            "task_key": key,
            "split": split,
            "shards": [
                {"rank": k, "rows": sum(len(c["finish_reasons"]) for c in s["chunks"]), "sample_s": s["seconds"],
                 "score_s": sc["seconds"]}
                for k, s, sc in zip(per_rank, sampled, scored, strict=True)
            ],
        }
    )  # fmt: skip
    (out / "batch.json").unlink(missing_ok=True)
    return str(batch.save(out))


@task(name="score-rollouts")
def sharded_rewards(batch_dir: str, reward_cfg: dict, *, pool: str, iteration: int | None = None) -> str:
    """`tasks.rewards.score_rollouts` on the workers, each scoring its rows; the same score table."""
    import torch

    from gae.distributed.cluster import get_pool
    from gae.distributed.rollout import split_rows
    from gae.rewards import ScoreTable
    from tasks.rewards import SCORES_FILE

    ranges = split_rows(_n_rows(batch_dir), get_pool(pool).size)
    per_rank = {k: (batch_dir, reward_cfg, r.start, r.stop) for k, r in enumerate(ranges) if len(r)}
    parts = run_sharded(pool, "rewards", per_rank, stage="score-rollouts", iteration=iteration)
    table = ScoreTable(
        total=torch.cat([p["total"] for p in parts]),
        components={
            name: torch.cat([p["components"][name] for p in parts]) for name in parts[0]["components"]
        },
        weights=parts[0]["weights"],
    )
    return str(table.save(Path(batch_dir) / SCORES_FILE))


def _clear_partitions(stage_dir: str, run_id: str, iteration: int) -> None:
    """Drop what an earlier attempt staged for the iteration (parts of another shard count, a
    publish manifest), so the parts written next are the whole iteration."""
    from gae.store import TABLES, partition_path

    for table in TABLES:
        shutil.rmtree(partition_path(stage_dir, table, run_id, iteration).parent, ignore_errors=True)


@task(name="store-iteration", retries=2, retry_delay_seconds=1)
def sharded_store(
    data_dir: str,
    run_id: str,
    iteration: int,
    batch_dir: str,
    scores_path: str,
    advantages_path: str,
    tokenizer_path: str | None = None,
    *,
    pool: str,
) -> dict:
    """`tasks.store.store_iteration` on the workers: worker k writes part-k (its rows) of the
    iteration's tokens and rollouts files into `data_dir` (the staging area, published whole)."""
    from gae.distributed.cluster import get_pool
    from gae.distributed.rollout import split_rows
    from gae.store import partition_path

    _clear_partitions(data_dir, run_id, iteration)
    ranges = split_rows(_n_rows(batch_dir), get_pool(pool).size)
    per_rank = {
        k: (
            data_dir,
            run_id,
            iteration,
            batch_dir,
            scores_path,
            advantages_path,
            tokenizer_path,
            k,
            r.start,
            r.stop,
        )
        for k, r in enumerate(ranges)
        if len(r)
    }
    parts = run_sharded(pool, "store_part", per_rank, stage="store-iteration", iteration=iteration)
    return {
        "tokens": str(partition_path(data_dir, "tokens", run_id, iteration).parent),
        "rollouts": str(partition_path(data_dir, "rollouts", run_id, iteration).parent),
        "token_rows": sum(p["token_rows"] for p in parts),
        "rollout_rows": sum(p["rollout_rows"] for p in parts),
        "parts": len(parts),
    }


@task(name="fill-train-logprobs", retries=2, retry_delay_seconds=1)
def sharded_fill(
    data_dir: str, run_id: str, iteration: int, batch_dir: str, train_logprobs_path: str, *, pool: str
) -> dict:
    """`tasks.store.fill_train_logprobs` on the workers, each filling its own part."""
    from gae.distributed.cluster import get_pool
    from gae.distributed.rollout import split_rows

    ranges = split_rows(_n_rows(batch_dir), get_pool(pool).size)
    per_rank = {
        k: (data_dir, run_id, iteration, batch_dir, train_logprobs_path, k, r.start, r.stop)
        for k, r in enumerate(ranges)
        if len(r)
    }
    parts = run_sharded(pool, "fill_part", per_rank, stage="fill-train-logprobs", iteration=iteration)
    return {"token_rows": sum(p["token_rows"] for p in parts), "parts": len(parts)}


@task(name="ppo-update")
def sharded_update(
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
    pool: str,
) -> dict:
    """`tasks.train.train_iteration` data-parallel over the workers (torch.distributed: gloo on
    CPU, NCCL on GPU): each rank takes its share of every minibatch, the loss denominators,
    metrics and gradients are summed over ranks, so the step is the single-process step. Rank 0
    writes the checkpoint and the log-probs file; returns what train_iteration returns."""
    from gae.distributed.cluster import get_pool
    from gae.train import PPOConfig
    from tasks.train import update_iteration

    world = get_pool(pool).size
    B = _n_rows(batch_dir)
    minibatches = min(PPOConfig.model_validate(ppo_cfg).minibatches, B)
    if B // minibatches < world:
        raise ValueError(
            f"ppo.minibatches={minibatches} cuts {B} rows into minibatches of {B // minibatches}, fewer than the "
            f"{world} workers that share each one: set ppo.minibatches <= {max(1, B // world)} or use fewer workers"
        )
    args = (data_dir, run_id, iteration, policy_dir, batch_dir, advantages_path, ppo_cfg, shaping_cfg)
    kwargs = {"kl_coef": kl_coef, "mean_kl": mean_kl, "total_iterations": total_iterations, "device": device}
    ranks = {k: (update_iteration, args, kwargs) for k in range(world)}
    results = run_sharded(pool, "update", ranks, stage="ppo-update", iteration=iteration)
    out = results[0]
    out["metrics"]["timing_s/update_slowest_rank"] = max(r["seconds"] for r in results)
    return {k: v for k, v in out.items() if k != "seconds"}


def stage_tasks(pool: str | None, iteration: int, cluster_cfg: dict | None = None) -> SimpleNamespace:
    """The tasks an iteration runs: the local ones, or (with a worker pool) their sharded twins
    bound to it. Same arguments either way, so the flow lists its stages once."""
    from tasks.rewards import score_rollouts
    from tasks.rollout import rollout_task
    from tasks.store import fill_train_logprobs, store_iteration
    from tasks.train import train_iteration

    local = SimpleNamespace(
        rollout=rollout_task,
        reward=score_rollouts,
        store=store_iteration,
        update=train_iteration,
        fill=fill_train_logprobs,
    )
    if pool is None:
        return local
    shard_rewards = (cluster_cfg or {}).get("shard_rewards", True)
    return SimpleNamespace(
        rollout=partial(sharded_rollout, pool=pool, iteration=iteration),
        reward=partial(sharded_rewards, pool=pool, iteration=iteration) if shard_rewards else score_rollouts,
        store=partial(sharded_store, pool=pool),
        update=partial(sharded_update, pool=pool),
        fill=partial(sharded_fill, pool=pool),
    )

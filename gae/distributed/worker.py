"""One worker of the pool: a long-lived process that keeps the tokenizer, the policy and its
reference loaded, and does its shard of each stage. A plain class: `gae.distributed.cluster`
turns it into a Ray actor; tests also call it directly.

Models are cached by what is on disk: a policy directory is loaded again only when its path
or its files (size, mtime) change, so consecutive iterations on an unchanged policy, and the
reference every iteration, cost no load.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import torch


def files_key(model_dir: str | Path) -> tuple:
    """What identifies a saved model on disk: its resolved path and each file's size and mtime."""
    d = Path(model_dir).resolve()
    stats = (
        tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.iterdir()) if p.is_file())
        if d.is_dir()
        else ()
    )
    return (str(d), stats)


def take_rows(batch, start: int, stop: int):
    """Rows [start, stop) of a RolloutBatch, widths kept (so per-token columns line up with the
    whole batch's) and group ids global."""
    from dataclasses import fields

    from gae.batch import LIST_FIELDS, TENSOR_FIELDS, RolloutBatch

    kw = {f.name: getattr(batch, f.name) for f in fields(batch) if f.name != "host_copies"}
    for name in TENSOR_FIELDS:
        kw[name] = kw[name][start:stop]
    for name in LIST_FIELDS:
        kw[name] = kw[name][start:stop]
    return RolloutBatch(**kw)


class Worker:
    """Rank `rank` of `world`. Every public method is one stage's shard; arguments are paths,
    ids, configs as dicts and small lists, results are small tensors or JSON-able dicts."""

    def __init__(self, rank: int, world: int, *, threads: int = 1, device: str = "auto"):
        from gae.device import resolve_device

        torch.set_num_threads(int(threads))
        self.rank, self.world = int(rank), int(world)
        self.device = resolve_device(device)
        self._models: dict[str, tuple[tuple, torch.nn.Module]] = {}
        self._tok: tuple[str, object] | None = None
        self._pending: dict[str, list[dict]] = {}  # sampled chunks waiting for the batch's widths
        self.loads = 0  # model loads from disk (the cache's effect is tested)

    # ------------------------------------------------------------------ state

    def info(self) -> dict:
        """Who this worker is: rank, pid, host, device, threads (the pool's table)."""
        return {
            "rank": self.rank,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "device": str(self.device),
            "torch_threads": torch.get_num_threads(),
            "model_loads": self.loads,
        }

    def free_port(self) -> int:
        """A TCP port free on this node, for the process group's rendezvous (rank 0)."""
        with socket.socket() as s:
            s.bind(("", 0))
            return int(s.getsockname()[1])

    def init_process_group(self, init_method: str, backend: str) -> int:
        """Join the pool's torch.distributed group (the update's gradient all-reduce)."""
        import torch.distributed as dist

        if init_method.startswith("tcp://127."):
            # a local instance on loopback: gloo's own connections stay on it too
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        if not dist.is_initialized():
            dist.init_process_group(backend, init_method=init_method, rank=self.rank, world_size=self.world)
        return dist.get_world_size()

    def _model(self, slot: str, model_dir: str) -> torch.nn.Module:
        from gae.models import load_model

        key = files_key(model_dir)
        cached = self._models.get(slot)
        if cached is None or cached[0] != key:
            self._models[slot] = (key, load_model(model_dir, device=self.device))
            self.loads += 1
        return self._models[slot][1]

    def _policy_and_ref(self, policy_dir: str, ref_dir: str):
        policy = self._model("policy", policy_dir)
        if Path(ref_dir).resolve() == Path(policy_dir).resolve():
            return policy, policy
        return policy, self._model("ref", ref_dir)

    def _tokenizer(self, path: str):
        from gae.tokenizer import load_tokenizer

        if self._tok is None or self._tok[0] != str(path):
            self._tok = (str(path), load_tokenizer(path))
        return self._tok[1]

    # ------------------------------------------------------------------ rollouts

    def sample(
        self,
        tag: str,
        policy_dir: str,
        tokenizer_path: str,
        rollout_cfg: dict,
        prompts: list[dict],
        chunks: list,
    ) -> dict:
        """Phase 1 of a sharded rollout (gae.distributed.rollout.sample_chunks); the chunks stay
        here under `tag` for `score`, and come back to the driver too (it writes the batch)."""
        from gae.distributed.rollout import sample_chunks
        from gae.rollout import RolloutConfig

        cfg = RolloutConfig.model_validate(rollout_cfg)
        policy = self._model("policy", policy_dir)
        tok = self._tokenizer(tokenizer_path)
        sampled, truncated, seconds, decode = sample_chunks(
            policy, tok, prompts, chunks, cfg, device=self.device
        )
        self._pending = {tag: sampled}  # one rollout in flight per worker
        tokens = int(sum(int(c["action_mask"].sum()) for c in sampled))
        return {
            "chunks": sampled,
            "truncated": truncated,
            "seconds": seconds,
            "tokens": tokens,
            "decode": decode,
        }

    def chunk_rows(self, policy_dir: str, tokenizer_path: str, rollout_cfg: dict, prompts: list[dict]) -> int:
        """`rollout.batch_size` resolved on this worker's device (auto follows its free memory)."""
        from gae.distributed.rollout import chunk_rows
        from gae.rollout import RolloutConfig

        cfg = RolloutConfig.model_validate(rollout_cfg)
        policy = self._model("policy", policy_dir)
        return chunk_rows(policy, self._tokenizer(tokenizer_path), prompts, cfg, device=self.device)

    def score(
        self, tag: str, policy_dir: str, ref_dir: str, rollout_cfg: dict, P: int, T: int, pad_id: int
    ) -> dict:
        """Phase 2: pad this worker's chunks of `tag` to the batch's (P, T) and score them."""
        from gae.distributed.rollout import pad_chunk, score_chunks
        from gae.rollout import RolloutConfig

        sampled = self._pending.pop(tag, None)
        if sampled is None:
            raise RuntimeError(f"worker {self.rank}: no sampled chunks for rollout {tag!r} (restarted?)")
        cfg = RolloutConfig.model_validate(rollout_cfg)
        policy, ref = self._policy_and_ref(policy_dir, ref_dir)
        t0 = time.perf_counter()
        scored, timing = score_chunks(
            policy, ref, [pad_chunk(c, P, T, pad_id) for c in sampled], cfg, device=self.device
        )
        return {"chunks": scored, "timing": timing, "seconds": time.perf_counter() - t0}

    # ------------------------------------------------------------------ rewards and store

    def rewards(self, batch_dir: str, reward_cfg: dict, start: int, stop: int) -> dict:
        """Reward components of rows [start, stop) of the saved batch: {"total", "components", "weights"}."""
        from gae.batch import RolloutBatch
        from gae.rewards import RewardConfig, score_batch

        t0 = time.perf_counter()
        batch = take_rows(RolloutBatch.load(batch_dir), start, stop)
        table = score_batch(batch, RewardConfig.model_validate(reward_cfg))
        return {
            "total": table.total,
            "components": table.components,
            "weights": table.weights,
            "seconds": time.perf_counter() - t0,
        }

    def store_part(
        self,
        stage_dir: str,
        run_id: str,
        iteration: int,
        batch_dir: str,
        scores_path: str,
        advantages_path: str,
        tokenizer_path: str | None,
        part: int,
        start: int,
        stop: int,
    ) -> dict:
        """Write part `part` (rows [start, stop)) of the iteration's tokens and rollouts files."""
        from safetensors.torch import load_file

        from gae.batch import RolloutBatch
        from gae.rewards import ScoreTable
        from gae.store import write_iteration

        t0 = time.perf_counter()
        scores = ScoreTable.load(scores_path)
        adv = load_file(str(advantages_path))
        out = write_iteration(
            stage_dir,
            run_id=run_id,
            iteration=iteration,
            batch=take_rows(RolloutBatch.load(batch_dir), start, stop),
            token_rewards=adv["token_rewards"][start:stop],
            kl=adv["kl"][start:stop],
            advantages=adv["advantages"][start:stop],
            returns=adv["returns"][start:stop],
            scores=ScoreTable(
                total=scores.total[start:stop],
                components={k: v[start:stop] for k, v in scores.components.items()},
                weights=scores.weights,
            ),
            tokenizer=self._tokenizer(tokenizer_path) if tokenizer_path else None,
            part=part,
        )
        return {**out, "seconds": time.perf_counter() - t0}

    def fill_part(
        self, stage_dir: str, run_id: str, iteration: int, batch_dir: str, train_logprobs_path: str,
        part: int, start: int, stop: int,
    ) -> dict:  # fmt: skip
        """Set train_logprob in part `part` of the iteration's tokens file (rows [start, stop))."""
        from safetensors.torch import load_file

        from gae.batch import RolloutBatch
        from gae.store import fill_training_logprobs

        t0 = time.perf_counter()
        lp = load_file(str(train_logprobs_path))["train_logprobs"][start:stop]
        batch = take_rows(RolloutBatch.load(batch_dir), start, stop)
        out = fill_training_logprobs(
            stage_dir, run_id=run_id, iteration=iteration, train_logprobs=lp, batch=batch, part=part
        )
        return {**out, "seconds": time.perf_counter() - t0}

    # ------------------------------------------------------------------ PPO update

    def update(self, fn, args: tuple, kwargs: dict) -> dict:
        """One rank of the data-parallel PPO update: `fn` is the local update from files to a
        checkpoint (`tasks.train.update_iteration`, passed by reference), run with this rank's
        share of every minibatch and sums over ranks (`gae.train.ppo_update`'s `rank_rows` and
        `reduce_sum`); rank 0 writes the checkpoint and the trainer's log-probs."""
        t0 = time.perf_counter()
        reduce_sum = rank_rows = None
        if self.world > 1:
            import torch.distributed as dist

            def reduce_sum(t: torch.Tensor) -> torch.Tensor:
                dist.all_reduce(t)  # SUM
                return t

            def rank_rows(rows: torch.Tensor) -> torch.Tensor:
                return rows.tensor_split(self.world)[self.rank]

        out = fn(*args, **kwargs, reduce_sum=reduce_sum, rank_rows=rank_rows, writer=self.rank == 0)
        return {**out, "seconds": time.perf_counter() - t0}

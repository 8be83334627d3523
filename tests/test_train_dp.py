"""The data-parallel contract of `ppo_update` (its `reduce_sum` hook), on real torch.distributed
ranks: two gloo processes on 127.0.0.1, each holding half the rows, take the same step as one
process holding them all. This pins the loss weighting a data-parallel trainer builds on: the
denominators (action tokens, non-empty rows) are the whole minibatch's, not a shard's."""

from __future__ import annotations

import copy
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gae.batch import RolloutBatch
from gae.train import PPOConfig, build_optimizer, ppo_update
from tests.test_train import advantages_of, synthetic_batch, tiny_model

KEYS = (
    "actor/pg_loss",
    "critic/vf_loss",
    "actor/entropy",
    "actor/approx_kl",
    "actor/kl_loss",
    "actor/total_loss",
    "actor/grad_norm",  # the summed gradient itself: AdamW's first step only sees its sign
)


def _shard(batch: RolloutBatch, rows: list[int]) -> RolloutBatch:
    idx = torch.tensor(rows)
    pick = lambda xs: [xs[i] for i in rows]  # noqa: E731
    return RolloutBatch(
        rollout_ids=pick(batch.rollout_ids),
        prompt_ids=pick(batch.prompt_ids),
        group_ids=batch.group_ids[idx],
        prompt_tokens=batch.prompt_tokens[idx],
        prompt_mask=batch.prompt_mask[idx],
        response_tokens=batch.response_tokens[idx],
        action_mask=batch.action_mask[idx],
        logprobs=batch.logprobs[idx],
        ref_logprobs=batch.ref_logprobs[idx],
        values=batch.values[idx],
        last_values=batch.last_values[idx],
        prompts=pick(batch.prompts),
        responses=pick(batch.responses),
        references=pick(batch.references),
        finish_reasons=pick(batch.finish_reasons),
    )


def _setup(agg: str):
    base = tiny_model(21)
    batch = synthetic_batch(base, B=8, seed=22)
    batch.action_mask[1] = False  # an empty row, in rank 1's shard
    batch.action_mask[2, 3:] = False  # rank 0's shard holds fewer tokens than rank 1's
    batch.ref_logprobs = batch.logprobs - 0.1 * torch.rand(
        batch.logprobs.shape, generator=torch.Generator().manual_seed(3)
    )
    _, _, adv, ret = advantages_of(batch)
    cfg = PPOConfig(
        epochs=2, minibatches=1, loss_agg=agg, entropy_coef=0.01, whiten_advantages=False, actor_lr=1e-2
    )
    return base, batch, adv, ret, cfg


def _worker(rank: int, world: int, port: int, agg: str, out_path: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model, batch, adv, ret, cfg = _setup(agg)
        rows = [0, 2, 4, 6] if rank == 0 else [1, 3, 5, 7]
        shard = _shard(batch, rows)
        idx = torch.tensor(rows)
        cfg = cfg.model_copy(update={"micro_batch_rows": 3})  # two uneven micro batches per rank

        def reduce_sum(t: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(t)
            return t

        metrics, _ = ppo_update(
            model,
            build_optimizer(model, cfg),
            shard,
            adv[idx],
            ret[idx],
            cfg,
            kl_coef=0.1,
            kl_placement="loss",
            reduce_sum=reduce_sum,
        )
        if rank == 0:
            torch.save({"params": [p.detach() for p in model.parameters()], "metrics": metrics}, out_path)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_two_gloo_ranks_with_half_the_rows_each_take_the_single_process_step(agg, tmp_path):
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, _free_port(), agg, str(out)), nprocs=2, join=True)
    dp = torch.load(out, weights_only=False)

    model, batch, adv, ret, cfg = _setup(agg)
    single = copy.deepcopy(model)
    metrics, _ = ppo_update(
        single, build_optimizer(single, cfg), batch, adv, ret, cfg, kl_coef=0.1, kl_placement="loss"
    )
    assert metrics["actor/update_steps"] == 2
    moved = False
    for p0, p, q in zip(model.parameters(), single.parameters(), dp["params"], strict=True):
        # lr 1e-2: a wrong weighting moves a parameter by ~1e-2; float32 rounding through AdamW ~1e-6
        torch.testing.assert_close(q, p, atol=2e-5, rtol=1e-4)
        moved |= not torch.equal(p0, p)
    assert moved
    for key in KEYS:
        assert dp["metrics"][key] == pytest.approx(metrics[key], rel=1e-4, abs=1e-6), key

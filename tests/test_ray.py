"""`cluster.executor: ray` against the single-process pipeline, on a real local Ray instance.

One Ray instance for the module (loopback only, token auth off, its own temp dir), started
and stopped here; one pool of 2 workers for the stage tests. Every sharded stage is compared
with the local task on the same files: rollouts bit for bit (torch.equal on every tensor),
the score table, the store's rows.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest
import torch

from gae.batch import TENSOR_FIELDS, RolloutBatch
from gae.models import ModelConfig, build_model, save_model
from gae.tokenizer import load_tokenizer, train_tokenizer

PROMPTS = [
    {"prompt_id": "a", "prompt": "the quick brown fox jumps over the lazy dog", "reference": "and runs."},
    {"prompt_id": "b", "prompt": "to be", "reference": "or not to be."},
    {"prompt_id": "c", "prompt": "hello world and more words here", "reference": None},
    {"prompt_id": "d", "prompt": "a b c", "reference": "d e f."},
    {"prompt_id": "e", "prompt": "the fox ran over the hill again and again", "reference": "The end."},
]
# 5 prompts x 2 samples = 10 rows in chunks of 4: [0, 4) [4, 8) [8, 10). Worker 0 gets the first
# two chunks, worker 1 the last, which holds both samples of prompt "e" only: no prompt padding
# in its own chunk, padding once widened to the batch's P (the case a per-shard merge gets wrong).
ROLLOUT = {"n_samples": 2, "max_new_tokens": 10, "batch_size": 4, "temperature": 1.0}


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray for this module: 127.0.0.1 only, no token file in the home directory."""
    from gae.distributed.cluster import import_ray

    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.pop("RAY_ADDRESS", None)  # never another cluster
    ray = import_ray(local_start=True)
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        _temp_dir=tmp,
        object_store_memory=100 * 1024 * 1024,
    )
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tokenizer, a policy and a different reference (tiny GPTs), and a prompts file."""
    root = tmp_path_factory.mktemp("assets")
    texts = [p["prompt"] for p in PROMPTS] * 10 + ["hello world and more words"] * 10
    tok_path = train_tokenizer(texts, vocab_size=300, out_dir=root / "tok")
    tok = load_tokenizer(tok_path)
    dirs = {}
    for name, seed in (("policy", 0), ("ref", 1)):
        torch.manual_seed(seed)
        m = build_model(ModelConfig.preset("tiny"), tok.vocab_size).eval()
        with torch.no_grad():
            m.value_head.weight.normal_(0, 0.5)  # non-zero values, so comparing them means something
        dirs[name] = str(save_model(m, root / name))
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return {"tok": str(tok_path), "prompts": str(prompts), **dirs}


@pytest.fixture(scope="module")
def pool(ray_instance):
    from gae.distributed.cluster import start_pool
    from gae.distributed.config import ClusterConfig

    p = start_pool(ClusterConfig(executor="ray", workers=2), device="cpu")
    yield p
    p.close()


def in_flow(fn, *args, **kwargs):
    """Run a task (or anything that maps tasks) inside a flow run: the sharded twins map one
    task run per worker, which needs a flow's task runner."""
    from prefect import flow

    @flow(name="ray-stage-test")
    def _run():
        return fn(*args, **kwargs)

    return _run()


def local_rollout(assets, out_dir, **kw):
    from prefect.logging import disable_run_logger

    from tasks.rollout import rollout_task

    with disable_run_logger():
        return rollout_task.fn(
            None, assets["policy"], assets["ref"], assets["tok"], {**ROLLOUT, **kw},
            out_dir=str(out_dir), prompts_path=assets["prompts"], seed=11, device="cpu",
        )  # fmt: skip


def test_sharded_rollout_is_bit_identical_to_local(prefect_api, pool, assets, tmp_path):
    """2 workers vs one process, same files and seed: every tensor torch.equal, every list equal."""
    from tasks.distributed import sharded_rollout

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count (cluster.threads): same summation order
    try:
        local = RolloutBatch.load(local_rollout(assets, tmp_path / "local"))
    finally:
        torch.set_num_threads(before)
    out = in_flow(
        sharded_rollout, None, assets["policy"], assets["ref"], assets["tok"], ROLLOUT,
        out_dir=str(tmp_path / "ray"), prompts_path=assets["prompts"], seed=11, device="cpu", pool=pool.id,
        iteration=0,
    )  # fmt: skip
    ray_batch = RolloutBatch.load(out)
    assert [s["rank"] for s in ray_batch.meta["shards"]] == [0, 1]  # both workers sampled
    for name in TENSOR_FIELDS:
        a, b = getattr(local, name), getattr(ray_batch, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    for name in ("rollout_ids", "prompt_ids", "prompts", "responses", "references", "finish_reasons"):
        assert getattr(local, name) == getattr(ray_batch, name), name
    assert ray_batch.meta["task_key"] == local.meta["task_key"]  # a rerun by either executor reuses it
    assert not torch.equal(local.logprobs, local.ref_logprobs)  # two different models really ran


def test_scoring_shards_at_their_own_widths_would_differ(assets):
    """Why scoring waits for the batch's widths: the last chunk (one prompt, no padding) scored
    at its own width takes another attention kernel than at the batch's width, and its
    log-probs differ from the local batch's. The bit-identity test above would catch that merge."""
    from gae.distributed.rollout import pad_chunk, plan_rows, sample_chunks, score_chunks, widths
    from gae.models import load_model
    from gae.rollout import RolloutConfig

    tok = load_tokenizer(assets["tok"])
    policy, ref = load_model(assets["policy"]), load_model(assets["ref"])
    cfg = RolloutConfig(**ROLLOUT, seed=11)
    plan = plan_rows(PROMPTS, cfg)
    chunks = [
        [(plan[r][0], plan[r][2]) for r in range(s, min(s + 4, len(plan)))] for s in range(0, len(plan), 4)
    ]
    sampled, _, _, _ = sample_chunks(policy, tok, PROMPTS, chunks, cfg, device="cpu")
    P, T = widths(sampled)
    last = sampled[-1]
    assert bool(last["prompt_mask"].all()) and last["prompt_tokens"].shape[1] < P
    at_batch, _ = score_chunks(policy, ref, [pad_chunk(last, P, T, tok.pad_id)], cfg, device="cpu")
    own_P, own_T = widths([last])
    at_own, _ = score_chunks(policy, ref, [pad_chunk(last, own_P, own_T, tok.pad_id)], cfg, device="cpu")
    n = own_T
    assert not torch.equal(at_batch[0]["scored_logprobs"][:, :n], at_own[0]["scored_logprobs"][:, :n])
    torch.testing.assert_close(at_batch[0]["scored_logprobs"][:, :n], at_own[0]["scored_logprobs"][:, :n])


def test_worker_loads_a_policy_again_only_when_its_files_change(assets, tmp_path):
    """The worker's model cache, without Ray: same directory and files -> no load."""
    from gae.distributed.worker import Worker
    from gae.models import load_model

    pol = tmp_path / "pol"
    shutil.copytree(assets["policy"], pol)
    w = Worker(0, 1, threads=1, device="cpu")
    chunk = [[(0, 1), (0, 2)]]
    args = ("t", str(pol), assets["tok"], ROLLOUT, PROMPTS[:1], chunk)
    first = w.sample(*args)
    w.sample(*args)
    assert w.loads == 1
    save_model(load_model(pol), pol)  # same weights, rewritten: a new checkpoint in place
    again = w.sample(*args)
    assert w.loads == 2
    assert torch.equal(first["chunks"][0]["response_tokens"], again["chunks"][0]["response_tokens"])


def test_sharded_rewards_and_store_equal_local(prefect_api, pool, assets, tmp_path):
    """Scores per worker = the local score table; parts written by 2 workers, published, hold
    exactly the rows the local writer stores (DuckDB over both stores)."""
    import duckdb
    from prefect.logging import disable_run_logger

    from gae.rewards import ScoreTable
    from tasks.advantages import compute_advantages
    from tasks.distributed import sharded_fill, sharded_rewards, sharded_store
    from tasks.pipeline import publish_iteration
    from tasks.rewards import score_rollouts
    from tasks.store import fill_train_logprobs, store_iteration

    rewards = {
        "components": [
            {"name": "chrf", "weight": 0.5},
            {"name": "length_window", "weight": 0.3, "options": {"min_length": 2, "max_length": 6}},
            {"name": "sql", "weight": 0.2, "options": {"expression": "response_length > 3"}},
        ]
    }
    batch_dir = local_rollout(assets, tmp_path / "batch")
    with disable_run_logger():
        local_scores = ScoreTable.load(score_rollouts.fn(batch_dir, rewards))
    ray_scores = ScoreTable.load(in_flow(sharded_rewards, batch_dir, rewards, pool=pool.id, iteration=0))
    assert torch.equal(local_scores.total, ray_scores.total)
    assert local_scores.weights == ray_scores.weights
    assert list(local_scores.components) == list(ray_scores.components)
    for k, v in local_scores.components.items():
        assert torch.equal(v, ray_scores.components[k]), k

    with disable_run_logger():
        adv = compute_advantages.fn(batch_dir, str(tmp_path / "batch" / "scores.safetensors"),
                                    {"estimator": "gae"}, {}, kl_coef=0.05, device="cpu")  # fmt: skip
    lp = tmp_path / "train_lp.safetensors"
    from safetensors.torch import save_file

    B, T = RolloutBatch.load(batch_dir).action_mask.shape
    save_file({"train_logprobs": torch.randn(B, T)}, str(lp))
    scores = str(tmp_path / "batch" / "scores.safetensors")
    stores = {}
    for name in ("local", "ray"):
        data, stage = tmp_path / name, tmp_path / name / "stage"
        if name == "local":
            with disable_run_logger():
                info = store_iteration.fn(str(stage), "r1", 0, batch_dir, scores, adv["path"], assets["tok"])
                fill_train_logprobs.fn(str(stage), "r1", 0, batch_dir, str(lp))
        else:
            # an earlier attempt with 3 workers left a part-2 in the staging area: it must not survive
            stale = stage / "tokens" / "run_id=r1" / "iteration=0" / "part-2.parquet"
            stale.parent.mkdir(parents=True)
            shutil.copy(
                tmp_path / "local" / "tokens" / "run_id=r1" / "iteration=0" / "part-0.parquet",
                stale,
            )
            info = in_flow(
                sharded_store,
                str(stage),
                "r1",
                0,
                batch_dir,
                scores,
                adv["path"],
                assets["tok"],
                pool=pool.id,
            )
            assert info["parts"] == 2
            in_flow(sharded_fill, str(stage), "r1", 0, batch_dir, str(lp), pool=pool.id)
        with disable_run_logger():
            publish_iteration.fn(str(data), str(stage), "r1", 0)
        stores[name] = info
    assert stores["local"]["token_rows"] == stores["ray"]["token_rows"] > 0
    files = sorted(p.name for p in (tmp_path / "ray" / "tokens" / "run_id=r1" / "iteration=0").iterdir())
    assert files == ["part-0.parquet", "part-1.parquet"]
    con = duckdb.connect()
    for table in ("tokens", "rollouts"):
        cols = "* exclude (written_at)" if table == "rollouts" else "*"
        q = "select {c} from read_parquet('{p}/{t}/*/*/*.parquet', hive_partitioning=true) order by rollout_id{pos}"
        pos = ", position" if table == "tokens" else ""
        a = con.sql(q.format(c=cols, p=tmp_path / "local", t=table, pos=pos)).fetchall()
        b = con.sql(q.format(c=cols, p=tmp_path / "ray", t=table, pos=pos)).fetchall()
        assert a == b and len(a) > 0, table


# ---------------------------------------------------------------------------------------
# data-parallel PPO: 2 gloo ranks on Ray workers against one process


def naive_update(*args, reduce_sum=None, rank_rows=None, writer=True, **kwargs):
    """The classic data-parallel bug, for the test below to catch: each rank divides by its own
    shard's counts (the int64 denominators are not summed) and gradients are averaged over
    ranks, as plain DDP does. Runs on the workers (passed by reference, like the real one)."""
    import torch.distributed as dist

    from tasks.train import update_iteration

    def per_rank_mean(t):
        if t.dtype == torch.int64:  # loss denominators (and the scored-rows mask): left per rank
            return t
        t = reduce_sum(t)
        return t / dist.get_world_size() if t.dtype == torch.float32 else t  # gradients: averaged

    return update_iteration(*args, **kwargs, reduce_sum=per_rank_mean, rank_rows=rank_rows, writer=writer)


def _update_inputs(assets, root):
    """A rollout batch with ragged masks (responses of many lengths), scores and advantages."""
    from prefect.logging import disable_run_logger

    from tasks.advantages import compute_advantages
    from tasks.rewards import score_rollouts

    batch_dir = local_rollout(assets, root / "batch", max_new_tokens=12)
    # The untrained policy rarely samples EOS: cut the rows to varied lengths, as EOS would.
    b = RolloutBatch.load(batch_dir)
    keep = (
        torch.arange(b.action_mask.shape[1])[None, :]
        < torch.tensor([1 + (5 * i) % 12 for i in range(b.batch_size)])[:, None]
    )
    b.action_mask &= keep
    for name in ("logprobs", "ref_logprobs", "values"):
        setattr(b, name, torch.where(keep, getattr(b, name), torch.zeros(())))
    b.finish_reasons = ["eos"] * b.batch_size
    b.host_copies = {}
    b.save(batch_dir)
    with disable_run_logger():
        scores = score_rollouts.fn(
            batch_dir, {"components": [{"name": "length_window", "options": {"max_length": 6}}]}
        )
        adv = compute_advantages.fn(batch_dir, scores, {"estimator": "gae"}, {}, kl_coef=0.05, device="cpu")
    return batch_dir, adv


def _params(ckpt_policy):
    from gae.models import load_model

    return [p.detach() for p in load_model(ckpt_policy).parameters()]


PPO_CASES = {
    "token-mean": {"loss_agg": "token-mean", "micro_batch_rows": 2},
    "seq-mean-token-mean": {"loss_agg": "seq-mean-token-mean"},
    "seq-mean-token-sum": {"loss_agg": "seq-mean-token-sum", "micro_batch_rows": 3},
    "target-kl": {"loss_agg": "token-mean", "target_kl": 1e-4, "score_before_update": False},
}


@pytest.mark.parametrize("case", list(PPO_CASES))
def test_data_parallel_update_equals_one_process(prefect_api, pool, assets, tmp_path, case):
    """2 workers (gloo), each its share of every minibatch, vs train_iteration in one process on
    the same files: the parameters after the update, the metrics and the trainer's log-probs
    agree to float tolerance under every loss aggregation, with micro batches and with the
    target-KL stop (decided on the all-reduced KL, so both ranks stop at the same minibatch)."""
    from prefect.logging import disable_run_logger
    from safetensors.torch import load_file

    from tasks.distributed import sharded_update
    from tasks.train import train_iteration

    batch_dir, adv = _update_inputs(assets, tmp_path)
    mask = RolloutBatch.load(batch_dir).action_mask
    shares = torch.arange(mask.shape[0]).tensor_split(2)
    assert mask[shares[0]].sum() != mask[shares[1]].sum()  # ragged: the ranks hold different token counts
    # AdamW's first steps move a parameter by lr * g / (|g| + eps): where |g| is near eps, float
    # summation order alone (ranks add in another order) moves it by O(lr). eps 1e-6 keeps the
    # comparison well-conditioned; the wrong weighting still moves parameters by ~lr (see below).
    ppo = {
        "epochs": 2,
        "minibatches": 2,
        "actor_lr": 1e-2,
        "critic_lr": 1e-2,
        "adam_eps": 1e-6,
        **PPO_CASES[case],
    }
    shaping = {"kl": {"placement": "loss", "estimator": "k3", "coef": 0.1}}
    args = (str(tmp_path / "data"), "r", 0, assets["policy"], batch_dir, adv["path"], ppo, shaping)
    kw = {"kl_coef": 0.1, "mean_kl": adv["mean_kl"], "device": "cpu"}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with disable_run_logger():
            local = train_iteration.fn(*args, **kw)
    finally:
        torch.set_num_threads(before)
    dp = in_flow(sharded_update, *args[:1], "r-dp", *args[2:], **kw, pool=pool.id)
    moved = False
    for p0, p, q in zip(
        _params(assets["policy"]), _params(local["model_dir"]), _params(dp["model_dir"]), strict=True
    ):
        torch.testing.assert_close(q, p, atol=2e-5, rtol=1e-4)  # lr 1e-2: a wrong weighting moves ~1e-2
        moved |= not torch.equal(p0, p)
    assert moved
    for key in ("actor/pg_loss", "critic/vf_loss", "actor/kl_loss", "actor/approx_kl", "actor/grad_norm"):
        assert dp["metrics"][key] == pytest.approx(local["metrics"][key], rel=1e-4, abs=1e-6), key
    assert dp["metrics"]["actor/update_steps"] == local["metrics"]["actor/update_steps"]
    assert dp["metrics"]["actor/early_stopped"] == local["metrics"]["actor/early_stopped"]
    if case == "target-kl":
        assert local["metrics"]["actor/early_stopped"] == 1.0 and local["metrics"]["actor/update_steps"] < 4
    torch.testing.assert_close(
        load_file(dp["train_logprobs"])["train_logprobs"],
        load_file(local["train_logprobs"])["train_logprobs"],
    )


def test_a_per_rank_token_mean_is_caught(prefect_api, pool, assets, tmp_path):
    """The same comparison with the naive data-parallel update (per-rank denominators, averaged
    gradients) fails: the equality above is a test a wrong weighting cannot pass."""
    from prefect.logging import disable_run_logger

    from gae.distributed.cluster import get_pool
    from tasks.train import train_iteration

    batch_dir, adv = _update_inputs(assets, tmp_path)
    ppo = {
        "epochs": 1,
        "minibatches": 1,
        "actor_lr": 1e-2,
        "critic_lr": 1e-2,
        "adam_eps": 1e-6,
        "loss_agg": "token-mean",
    }
    args = (str(tmp_path / "data"), "r", 0, assets["policy"], batch_dir, adv["path"], ppo, {})
    kw = {"kl_coef": 0.05, "mean_kl": adv["mean_kl"], "device": "cpu"}
    with disable_run_logger():
        local = train_iteration.fn(*args, **kw)
    naive_args = (args[0], "r-naive", *args[2:])
    out = get_pool(pool.id).run(
        "update", {k: (naive_update, naive_args, kw) for k in range(2)}, what="update"
    )[0]
    diffs = [
        (q - p).abs().max()
        for p, q in zip(_params(local["model_dir"]), _params(out["model_dir"]), strict=True)
    ]
    assert max(diffs) > 1e-3  # far outside the 2e-5 the correct update is held to


# ---------------------------------------------------------------------------------------
# bad input: one clear line


def _gae(args, *, preamble="", env=None, timeout=120):
    import subprocess
    import sys

    code = f"{preamble}import sys; from gae.cli import main; sys.argv = ['gae', *sys.argv[1:]]; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_refuses_ray_when_it_is_not_installed_standin(tmp_path):
    """Stand-in for a machine without the ray extra: `import ray` fails in the subprocess."""
    out = _gae(
        ["run", "--executor", "ray", "--data-dir", str(tmp_path)],
        preamble="import sys; sys.modules['ray'] = None; ",
    )
    assert out.returncode == 1
    assert (
        "error: cluster.executor=ray needs Ray, which is not installed: pip install 'gaeflow[ray]'"
        in out.stderr
    )
    assert "Traceback" not in out.stderr


def test_cli_refuses_an_unreachable_cluster_address_at_once(tmp_path):
    port = _closed_port()
    out = _gae(
        [
            "run",
            "--executor",
            "ray",
            "--set",
            f"cluster.address=127.0.0.1:{port}",
            "--data-dir",
            str(tmp_path),
        ]
    )
    assert out.returncode == 1
    assert f"cluster.address='127.0.0.1:{port}': no Ray cluster answers at 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_more_gpus_than_the_cluster_has_is_refused(ray_instance):
    from gae.distributed.cluster import start_pool
    from gae.distributed.config import ClusterConfig

    cfg = ClusterConfig(executor="ray", workers=2, gpus_per_worker=1)
    with pytest.raises(
        ValueError,
        match=r"asks for 2 GPUs \(2 workers x cluster.gpus_per_worker=1\) but the Ray cluster has 0",
    ):
        start_pool(cfg)
    assert ray_instance.is_initialized()  # a cluster it joined is left running


def test_cli_options_set_the_cluster_section():
    from gae.commands.run import option_values
    from gae.config import load_config

    cfg = load_config(preset="smoke", values=option_values(None, None, None, None, [], False, "ray", 3))
    assert (cfg.cluster.executor, cfg.cluster.workers) == ("ray", 3)
    assert load_config(preset="smoke").cluster.executor == "local"
    for bad, where in (("cluster.executor=dask", "cluster.executor"), ("cluster.workers=0", "cluster.workers"),
                       ("cluster.address=' '", "cluster.address")):  # fmt: skip
        with pytest.raises(ValueError, match=where.split(".")[1]):
            load_config(preset="smoke", overrides=[bad])


# ---------------------------------------------------------------------------------------
# the pipeline on Ray: a worker killed mid-iteration, then the same command resumes


@pytest.mark.slow
def test_pipeline_on_ray_fails_on_a_killed_worker_and_resumes(prefect_api, ray_instance, smoke_run, tmp_path):
    """The smoke pipeline on 2 workers, in a copy of the session's smoke data directory (its
    ingest and pretraining are reused: same corpus, same config); worker 1 is SIGKILLed once
    iteration 1's rollouts are saved."""
    import signal
    import threading
    import time

    import duckdb

    from flows.pipeline import rl_pipeline
    from gae.config import load_config
    from gae.distributed.cluster import WorkerDied

    data_dir = tmp_path / "data"
    shutil.copytree(smoke_run["data_dir"], data_dir)
    cfg = load_config(
        preset="smoke",
        overrides=[
            f"data_dir={data_dir}",
            f"corpus={json.dumps(smoke_run['cfg'].corpus)}",
            "run_name=killed",
            "cluster.executor=ray",
            "cluster.workers=2",
            "rollout.batch_size=8",  # 16 rows: one chunk per worker
        ],
    )
    runs = data_dir / "runs"
    killed: dict = {}

    def kill_worker_1_in_iteration_1():
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            state = runs / "killed.state.json"  # the copied smoke run has iteration dirs of its own
            run_id = json.loads(state.read_text())["run_id"] if state.exists() else None
            if run_id and (runs / run_id / "iter-00001" / "batch" / "batch.json").exists():
                pid = json.loads((runs / "killed.workers.json").read_text())["workers"][1]["pid"]
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
            time.sleep(0.01)

    t = threading.Thread(target=kill_worker_1_in_iteration_1, daemon=True)
    t.start()
    with pytest.raises(
        WorkerDied,
        match=r"Ray worker 1 \(pid \d+ on .*\) died during .* of iteration 1: .*resume from iteration 1",
    ) as died:
        rl_pipeline(cfg)
    assert "\n" not in str(died.value) and len(str(died.value)) < 300  # one line, not Ray's paragraph
    t.join(timeout=5)
    state = json.loads((runs / "killed.state.json").read_text())
    assert killed and state["last_completed_iteration"] == 0 and state["status"] == "failed"

    result = rl_pipeline(cfg)  # the same command again
    after = json.loads((runs / "killed.state.json").read_text())
    assert after["run_id"] == state["run_id"] and after["status"] == "finished"
    assert [h["iteration"] for h in after["history"]] == [0, 1]
    assert killed["pid"] not in [
        w["pid"] for w in json.loads((runs / "killed.workers.json").read_text())["workers"]
    ]
    B = cfg.prompts_per_iteration * cfg.rollout.n_samples
    con = duckdb.connect()
    tokens, rollouts = (str(data_dir / t / "**" / "*.parquet") for t in ("tokens", "rollouts"))
    run = {"run": after["run_id"]}  # the copied directory holds the smoke run's rows too
    per_it = con.execute(
        f"select iteration, count(*), count(distinct rollout_id), sum(response_length) from "
        f"read_parquet('{rollouts}', hive_partitioning=true) where run_id = $run group by 1 order by 1",
        run,
    ).fetchall()
    toks = con.execute(
        f"select iteration, count(*), count(distinct (rollout_id, position)), count(train_logprob) from "
        f"read_parquet('{tokens}', hive_partitioning=true) where run_id = $run group by 1 order by 1",
        run,
    ).fetchall()
    assert [r[:3] for r in per_it] == [(0, B, B), (1, B, B)]  # no rollout missing or twice
    assert [(r[0], r[1], r[2]) for r in toks] == [(i, n, n) for i, _, _, n in per_it]  # every token once
    assert all(r[3] == r[1] for r in toks)  # train log-probs filled in every part
    for it in (0, 1):
        parts = sorted(
            p.name for p in (data_dir / "tokens" / f"run_id={after['run_id']}" / f"iteration={it}").iterdir()
        )
        assert parts == ["part-0.parquet", "part-1.parquet"]
    assert not list(runs.rglob("stage/*/*/*/*.parquet"))  # nothing left in staging
    assert result["iterations"][-1]["iteration"] == 1

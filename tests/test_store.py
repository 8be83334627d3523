"""The per-token store: round trip through DuckDB, layout, atomicity, idempotence."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest
import torch

from gae.batch import RolloutBatch
from gae.paths import DataDir
from gae.rewards import ScoreTable
from gae.store import (
    ROLLOUTS,
    SCHEMA_VERSION,
    TOKENS,
    delete_iterations_after,
    fill_training_logprobs,
    list_iterations,
    partition_path,
    write_iteration,
)
from gae.store_views import read_file_metadata, register_views

REPO = Path(__file__).resolve().parents[1]


def make_batch(
    mask_rows=((1, 1, 1, 0, 0), (1, 1, 1, 1, 1), (1, 0, 0, 0, 0)), seed: int = 0, **overrides
) -> RolloutBatch:
    """A small batch; padding positions hold garbage (NaN log-probs, big values) on purpose."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor(mask_rows, dtype=torch.bool)
    B, T = mask.shape
    garbage = torch.full((B, T), float("nan"))
    kw = dict(
        rollout_ids=[f"p{i // 2}/{i % 2}" for i in range(B)],
        prompt_ids=[f"p{i // 2}" for i in range(B)],
        group_ids=torch.arange(B) // 2,
        prompt_tokens=torch.ones(B, 2, dtype=torch.long),
        prompt_mask=torch.ones(B, 2, dtype=torch.bool),
        response_tokens=torch.where(mask, torch.arange(B * T).reshape(B, T) + 10, 0),
        action_mask=mask,
        logprobs=torch.where(mask, -torch.rand(B, T, generator=g), garbage),
        ref_logprobs=torch.where(mask, -torch.rand(B, T, generator=g), garbage),
        values=torch.where(mask, torch.rand(B, T, generator=g), 1e6),
        last_values=torch.zeros(B),
        prompts=[f"prompt {i} 提示" for i in range(B)],
        responses=["The cat sat.", "猫坐在垫子上。", "x", "y", "z", "w"][:B],
        references=["The cat sat.", "猫坐在垫子上", None, "y", "z", "w"][:B],
        finish_reasons=["eos", "length", "eos", "eos", "eos", "eos"][:B],
        meta={"eos_id": 2},
    )
    kw.update(overrides)
    return RolloutBatch(**kw)


def outputs(batch: RolloutBatch, seed: int = 1) -> dict:
    """Per-token outputs (0 off the mask, as the shaping and estimators produce) and scores."""
    g = torch.Generator().manual_seed(seed)
    mask = batch.action_mask
    B, T = mask.shape

    def r():
        return torch.where(mask, torch.randn(B, T, generator=g), 0.0)

    total = torch.randn(B, generator=g)
    scores = ScoreTable(
        total=total,
        components={"chrf": total * 0.5, "ends": torch.ones(B)},
        weights={"chrf": 2.0, "ends": 0.0},
    )
    return dict(token_rewards=r(), kl=r(), advantages=r(), returns=r(), scores=scores)


class CharTokenizer:
    """Anything with token_texts(ids) serves; this one names ids, with some CJK."""

    def token_texts(self, ids):
        return [("猫" if i % 3 == 0 else f"t{i}") for i in ids]


def connect(data_dir) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    register_views(con, data_dir)
    return con


def test_round_trip_every_column_through_duckdb(tmp_path):
    batch = make_batch()
    out = outputs(batch)
    train_lp = torch.where(batch.action_mask, -torch.rand(3, 5), 0.0)
    info = write_iteration(
        tmp_path,
        run_id="007",
        iteration=3,
        batch=batch,
        tokenizer=CharTokenizer(),
        train_logprobs=train_lp,
        **out,
    )
    assert info["token_rows"] == 3 + 5 + 1 and info["rollout_rows"] == 3
    con = connect(tmp_path)
    rows = con.sql("select * from tokens order by rollout_id, position").fetchall()
    cols = [c.name for c in TOKENS]
    assert [d[0] for d in con.sql("select * from tokens").description] == cols
    expect = []
    for b in range(3):
        for t in range(int(batch.action_mask[b].sum())):  # contiguous masks: positions 0..len-1
            tid = int(batch.response_tokens[b, t])
            expect.append(
                (
                    "007",  # hive_types keeps "007" a string
                    3,
                    batch.rollout_ids[b],
                    batch.prompt_ids[b],
                    int(batch.group_ids[b]),
                    t,
                    tid,
                    "猫" if tid % 3 == 0 else f"t{tid}",
                    True,
                    *(
                        float(x[b, t])
                        for x in (
                            batch.logprobs,
                            batch.ref_logprobs,
                            batch.values,
                            out["kl"],
                            out["token_rewards"],
                            out["advantages"],
                            out["returns"],
                            train_lp,
                        )
                    ),
                )
            )
    assert rows == expect  # float32 widened to double exactly on both sides

    rrows = con.sql("select * from rollouts order by rollout_id").fetchall()
    names = [d[0] for d in con.sql("select * from rollouts").description]
    assert names == [c.name for c in ROLLOUTS] + ["reward_chrf", "reward_ends"]
    m = batch.action_mask
    for b, row in enumerate(rrows):
        rec = dict(zip(names, row, strict=True))
        assert rec["run_id"] == "007" and rec["iteration"] == 3
        assert rec["rollout_id"] == batch.rollout_ids[b] and rec["prompt_id"] == batch.prompt_ids[b]
        assert rec["group_id"] == int(batch.group_ids[b])
        assert rec["prompt"] == batch.prompts[b] and rec["response"] == batch.responses[b]
        assert rec["reference"] == batch.references[b] and rec["finish_reason"] == batch.finish_reasons[b]
        assert rec["score"] == float(out["scores"].total[b])
        assert rec["reward_chrf"] == float(out["scores"].components["chrf"][b]) and rec["reward_ends"] == 1.0
        assert rec["response_length"] == int(m[b].sum())
        assert rec["kl_sum"] == pytest.approx(float(out["kl"][b].sum()), rel=1e-6)
        assert rec["shaped_reward_sum"] == pytest.approx(float(out["token_rewards"][b].sum()), rel=1e-6)
        assert rec["written_at"] is not None


def test_partition_layout_and_schema_version(tmp_path):
    batch = make_batch()
    write_iteration(tmp_path, run_id="run-a", iteration=0, batch=batch, **outputs(batch))
    write_iteration(tmp_path, run_id="run-a", iteration=1, batch=batch, **outputs(batch))
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == [
        "rollouts/run_id=run-a/iteration=0/part-0.parquet",
        "rollouts/run_id=run-a/iteration=1/part-0.parquet",
        "tokens/run_id=run-a/iteration=0/part-0.parquet",
        "tokens/run_id=run-a/iteration=1/part-0.parquet",
    ]
    for f in files:
        md = read_file_metadata(tmp_path / f)
        assert md == {"gaeflow.schema_version": str(SCHEMA_VERSION), "gaeflow.table": f.split("/")[0]}
        # run_id and iteration live in the path only.
        assert "run_id" not in pl.read_parquet_schema(tmp_path / f)
    con = duckdb.connect()
    codec = con.sql(
        f"select distinct compression from parquet_metadata('{tmp_path}/tokens/*/*/*.parquet')"
    ).fetchall()
    assert codec == [("ZSTD",)]
    assert list_iterations(tmp_path, "run-a") == [0, 1]
    assert partition_path(DataDir(tmp_path), "tokens", "run-a", 1) == tmp_path / files[3]


def test_trailing_padding_dropped_interior_observation_tokens_kept(tmp_path):
    # Multi-turn row: action, observation, observation, action, padding; a row with no token at all.
    batch = make_batch(mask_rows=((1, 0, 0, 1, 0), (1, 1, 0, 0, 0), (0, 0, 0, 0, 0)))
    write_iteration(tmp_path, run_id="r", iteration=0, batch=batch, **outputs(batch))
    got = connect(tmp_path).sql("select rollout_id, position, is_action from tokens order by all").fetchall()
    assert got == [
        ("p0/0", 0, True),
        ("p0/0", 1, False),
        ("p0/0", 2, False),
        ("p0/0", 3, True),
        ("p0/1", 0, True),
        ("p0/1", 1, True),
    ]
    con = connect(tmp_path)
    assert con.sql("select rollout_id, response_length from rollouts order by 1").fetchall() == [
        ("p0/0", 2),
        ("p0/1", 2),
        ("p1/0", 0),
    ]


def test_token_text_null_without_tokenizer(tmp_path):
    batch = make_batch()
    write_iteration(tmp_path, run_id="r", iteration=0, batch=batch, **outputs(batch))
    con = connect(tmp_path)
    assert con.sql("select count(*), count(token), count(train_logprob) from tokens").fetchall() == [
        (9, 0, 0)
    ]


def test_idempotent_rewrite_replaces_the_iteration(tmp_path):
    big = make_batch()
    write_iteration(tmp_path, run_id="r", iteration=0, batch=big, **outputs(big))
    write_iteration(tmp_path, run_id="r", iteration=1, batch=big, **outputs(big))
    small = make_batch(mask_rows=((1, 1),), rollout_ids=["new/0"])
    for _ in range(2):  # rewriting twice gives the same state as once
        write_iteration(tmp_path, run_id="r", iteration=0, batch=small, **outputs(small))
    con = connect(tmp_path)
    assert con.sql(
        "select iteration, rollout_id, count(*) from tokens group by all order by all"
    ).fetchall() == [
        (0, "new/0", 2),
        (1, "p0/0", 3),
        (1, "p0/1", 5),
        (1, "p1/0", 1),
    ]
    assert con.sql("select iteration, count(*) from rollouts group by all order by all").fetchall() == [
        (0, 1),
        (1, 3),
    ]
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_failure_between_temp_write_and_rename_leaves_old_data(tmp_path, monkeypatch):
    import gae.fsutil

    old = make_batch()
    write_iteration(tmp_path, run_id="r", iteration=0, batch=old, **outputs(old))
    real_replace = os.replace

    def fail_on_parquet(src, dst):
        if str(dst).endswith(".parquet"):
            raise OSError("injected crash before rename")
        return real_replace(src, dst)

    monkeypatch.setattr(gae.fsutil.os, "replace", fail_on_parquet)
    new = make_batch(mask_rows=((1, 1),), rollout_ids=["new/0"])
    with pytest.raises(OSError, match="injected"):
        write_iteration(tmp_path, run_id="r", iteration=0, batch=new, **outputs(new))
    monkeypatch.undo()
    con = connect(tmp_path)
    assert con.sql("select count(*), count(distinct rollout_id) from tokens").fetchall() == [(9, 3)]
    assert con.sql("select count(*) from rollouts").fetchall() == [(3,)]
    assert not [p for p in tmp_path.rglob(".tmp-*")]


WRITER = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {repo!r})
    from tests.test_store import make_batch, outputs
    from gae.store import write_iteration
    B, T = 4000, 256   # ~1 M token rows: a write long enough to be killed in the middle
    batch = make_batch(mask_rows=torch.ones(B, T, dtype=torch.bool).tolist(),
                       rollout_ids=[f"new/{{i}}" for i in range(B)], prompt_ids=["new"] * B,
                       prompts=["p"] * B, responses=["r"] * B, references=[None] * B, finish_reasons=["eos"] * B)
    out = outputs(batch)
    print("ready", flush=True)
    while True:
        write_iteration({data!r}, run_id="r", iteration=0, batch=batch, **out)
        print("wrote", flush=True)
    """
)


@pytest.mark.slow
def test_writer_killed_mid_write_leaves_old_or_new(tmp_path):
    old = make_batch()
    write_iteration(tmp_path, run_id="r", iteration=0, batch=old, **outputs(old))
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER.format(repo=str(REPO), data=str(tmp_path))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        # Readers keep reading while the writer rewrites the iteration again and again: each
        # sees the old or the new iteration, never a mix, until a rewrite has completed.
        seen: set[int] = set()
        deadline = time.time() + 30
        while 4000 * 256 not in seen and time.time() < deadline:
            con = connect(tmp_path)
            n = con.sql("select count(*) from tokens").fetchall()[0][0]
            con.close()
            assert n in (9, 4000 * 256)
            seen.add(n)
        assert 4000 * 256 in seen, "readers never saw a completed rewrite"
        tmp_files: list[Path] = []
        while not tmp_files and time.time() < deadline:  # kill while a temporary file exists: mid-write
            tmp_files = list(tmp_path.rglob(".tmp-*"))
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert tmp_files, "the writer was never caught mid-write"
    finally:
        if proc.poll() is None:
            proc.kill()
    con = connect(tmp_path)
    n_tokens = con.sql("select count(*) from tokens").fetchall()[0][0]
    n_rollouts = con.sql("select count(*) from rollouts").fetchall()[0][0]
    assert (n_tokens, n_rollouts) in ((9, 3), (4000 * 256, 4000), (4000 * 256, 3))
    # Every visible file is a complete Parquet file with its metadata; leftovers are only temporaries.
    for f in tmp_path.rglob("*.parquet"):
        assert read_file_metadata(f)["gaeflow.schema_version"] == str(SCHEMA_VERSION)
    assert all(
        p.name.startswith(".tmp-") for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".parquet"
    )
    # The next write of the iteration clears what the killed writer left behind.
    write_iteration(tmp_path, run_id="r", iteration=0, batch=old, **outputs(old))
    assert not list(tmp_path.rglob(".tmp-*"))
    assert connect(tmp_path).sql("select count(*) from tokens").fetchall() == [(9,)]


def test_empty_batch_and_bad_shapes_refused(tmp_path):
    batch = make_batch(mask_rows=((0, 0), (0, 0)))
    with pytest.raises(ValueError, match="refusing to write an empty batch"):
        write_iteration(tmp_path, run_id="r", iteration=0, batch=batch, **outputs(batch))
    batch = make_batch()
    out = outputs(batch)
    out["advantages"] = out["advantages"][:, :4]
    with pytest.raises(ValueError, match=r"advantages has shape \(3, 4\), expected \(3, 5\)"):
        write_iteration(tmp_path, run_id="r", iteration=0, batch=batch, **out)
    with pytest.raises(ValueError, match="run_id"):
        write_iteration(tmp_path, run_id="../evil", iteration=0, batch=batch, **outputs(batch))
    assert not list(tmp_path.rglob("*.parquet"))


def test_fill_training_logprobs(tmp_path):
    batch = make_batch()
    out = outputs(batch)
    write_iteration(tmp_path, run_id="r", iteration=0, batch=batch, **out)
    lp = torch.where(batch.action_mask, -torch.arange(15.0).reshape(3, 5) / 10, 0.0)
    fill_training_logprobs(tmp_path, run_id="r", iteration=0, train_logprobs=lp, batch=batch)
    con = connect(tmp_path)
    got = con.sql("select rollout_id, position, train_logprob, advantage from tokens order by all").fetchall()
    b_of = {rid: b for b, rid in enumerate(batch.rollout_ids)}
    for rid, t, tl, adv in got:
        assert tl == float(lp[b_of[rid], t]) and adv == float(out["advantages"][b_of[rid], t])
    assert read_file_metadata(partition_path(tmp_path, "tokens", "r", 0))["gaeflow.table"] == "tokens"
    with pytest.raises(ValueError, match="not the batch written there"):
        fill_training_logprobs(
            tmp_path,
            run_id="r",
            iteration=0,
            train_logprobs=lp[:2],
            batch=make_batch(mask_rows=((1, 1, 1, 1, 1),) * 2),
        )
    with pytest.raises(FileNotFoundError, match="iteration 5"):
        fill_training_logprobs(tmp_path, run_id="r", iteration=5, train_logprobs=lp, batch=batch)


def test_delete_iterations_after(tmp_path):
    batch = make_batch()
    for it in range(4):
        write_iteration(tmp_path, run_id="r", iteration=it, batch=batch, **outputs(batch))
    write_iteration(tmp_path, run_id="other", iteration=3, batch=batch, **outputs(batch))
    assert delete_iterations_after(tmp_path, "r", 1) == [2, 3]
    assert delete_iterations_after(tmp_path, "r", 1) == []
    con = connect(tmp_path)
    assert con.sql("select distinct run_id, iteration from tokens order by all").fetchall() == [
        ("other", 3),
        ("r", 0),
        ("r", 1),
    ]
    assert con.sql("select distinct run_id, iteration from rollouts order by all").fetchall() == [
        ("other", 3),
        ("r", 0),
        ("r", 1),
    ]


def test_views_exist_and_are_empty_before_any_write(tmp_path):
    con = connect(tmp_path / "nothing-yet")
    assert con.sql("select * from tokens").fetchall() == []
    assert [d[0] for d in con.sql("select * from rollouts").description] == [c.name for c in ROLLOUTS]
    types = dict(con.sql("select column_name, column_type from (describe tokens)").fetchall())
    assert types["advantage"] == "FLOAT" and types["iteration"] == "BIGINT" and types["token"] == "VARCHAR"


def test_iterations_with_different_reward_components_union_by_name(tmp_path):
    batch = make_batch()
    out = outputs(batch)
    write_iteration(tmp_path, run_id="r", iteration=0, batch=batch, **out)
    out["scores"] = ScoreTable(
        total=torch.zeros(3), components={"bleu": torch.ones(3)}, weights={"bleu": 1.0}
    )
    write_iteration(tmp_path, run_id="r", iteration=1, batch=batch, **out)
    got = (
        connect(tmp_path)
        .sql("select iteration, count(reward_chrf), count(reward_bleu) from rollouts group by 1 order by 1")
        .fetchall()
    )
    assert got == [(0, 3, 0), (1, 0, 3)]


@pytest.mark.slow
def test_prefect_tasks_end_to_end_paths_in_paths_out(tmp_path):
    """rewards -> advantages -> store through the task functions, files between them."""
    from prefect.logging import disable_run_logger

    from tasks.advantages import compute_advantages
    from tasks.rewards import score_rollouts
    from tasks.store import fill_train_logprobs, store_iteration

    batch = make_batch()
    batch_dir = batch.save(tmp_path / "runs" / "r" / "iter-00000")
    with disable_run_logger():
        scores_path = score_rollouts.fn(str(batch_dir), {"components": [{"name": "ends_sentence"}]})
        adv = compute_advantages.fn(
            str(batch_dir), scores_path, {"estimator": "gae", "lam": 0.95}, {}, kl_coef=0.1, device="cpu"
        )
        from tasks.advantages import advantages_meta

        assert advantages_meta(adv["path"]) == {"estimator": "gae", "needs_critic": "true", "metrics": "{}"}
        info = store_iteration.fn(str(tmp_path), "r", 0, str(batch_dir), scores_path, adv["path"])
        lp_path = tmp_path / "train_lp.safetensors"
        from safetensors.torch import save_file

        save_file({"train_logprobs": torch.where(batch.action_mask, -1.0, 0.0)}, str(lp_path))
        fill_train_logprobs.fn(str(tmp_path), "r", 0, str(batch_dir), str(lp_path))
        # A critic-free estimator by name, on the same files: RLOO within group 0 (rows 0 and 1).
        s2 = ScoreTable(total=torch.tensor([1.0, 0.0, 0.0]), components={}, weights={}).save(
            tmp_path / "s2.st"
        )
        rloo = compute_advantages.fn(
            str(batch_dir), str(s2), {"estimator": "rloo"}, {}, kl_coef=0.0, device="cpu"
        )
        with pytest.raises(ValueError, match="unknown fields"):
            compute_advantages.fn(
                str(batch_dir), scores_path, {"estimator": "gae", "lambda": 1}, {}, kl_coef=0.0
            )
    from tasks.advantages import load_advantages

    # the estimator rides in the file's header: the trainer fits no critic for RLOO
    assert advantages_meta(rloo["path"]) == {"estimator": "rloo", "needs_critic": "false", "metrics": "{}"}
    a = load_advantages(rloo["path"])["advantages"]
    # group 0 scores 1, 0 -> RLOO 1 - 0 = 1 and 0 - 1 = -1 on every action token; row 2 alone -> 0.
    m = batch.action_mask
    assert torch.equal(a, torch.where(m, torch.tensor([[1.0], [-1.0], [0.0]]), 0.0))
    assert info["token_rows"] == 9 and isinstance(adv["mean_kl"], float)
    con = connect(tmp_path)
    # ends_sentence: "The cat sat." and "猫坐在垫子上。" end a sentence, "x" does not.
    assert con.sql("select rollout_id, score from rollouts order by 1").fetchall() == [
        ("p0/0", 1.0),
        ("p0/1", 1.0),
        ("p1/0", 0.0),
    ]
    assert con.sql("select avg(train_logprob) from tokens").fetchall() == [(-1.0,)]


def test_token_text_from_the_project_tokenizer(tmp_path):
    from gae.tokenizer import load_tokenizer, train_tokenizer

    texts = ["The cat sat on the mat.", "猫坐在垫子上。", "the cat, the mat"] * 20
    tok = load_tokenizer(train_tokenizer(texts, vocab_size=300, out_dir=tmp_path / "tok"))
    ids = tok.encode("猫 sat.") + [tok.eos_id]
    T = len(ids)
    batch = make_batch(
        mask_rows=((1,) * T,), response_tokens=torch.tensor([ids]), rollout_ids=["a"], prompt_ids=["a"]
    )
    write_iteration(tmp_path / "d", run_id="r", iteration=0, batch=batch, tokenizer=tok, **outputs(batch))
    got = connect(tmp_path / "d").sql("select token from tokens order by position").fetchall()
    # Byte-level pieces of 猫 show as U+FFFD when a token holds part of the character.
    assert [g[0] for g in got] == tok.token_texts(ids)
    assert len(got) == T and all(isinstance(g[0], str) for g in got)
    # The column comes from the vocabulary table: every id of the vocabulary in random order
    # gives what decoding each id gives; an id outside it falls back to token_texts ("<unk:ID>").
    from gae.store import _token_texts

    g = torch.Generator().manual_seed(0)
    many = torch.randint(0, tok.vocab_size, (5000,), generator=g).tolist()
    assert _token_texts(tok, pl.Series(many)).to_list() == tok.token_texts(many)
    assert _token_texts(tok, pl.Series([5, tok.vocab_size + 7])).to_list() == tok.token_texts(
        [5, tok.vocab_size + 7]
    )
    assert _token_texts(tok, pl.Series([], dtype=pl.Int32)).to_list() == []


def test_publish_survives_a_retry_after_a_partial_move_and_a_second_call(tmp_path, monkeypatch):
    """publish-iteration is retried by Prefect: a failure after moving the tokens file, the
    retry, and one more call after success leave exactly this iteration's files; a file of an
    earlier attempt that the new ones do not replace is removed."""
    import os

    from tasks.pipeline import publish_iteration

    data, stage = tmp_path / "data", tmp_path / "stage"
    for table in ("tokens", "rollouts"):
        p = stage / table / "run_id=R" / "iteration=0"
        p.mkdir(parents=True)
        (p / "part-0.parquet").write_text(f"new {table}")
    old = data / "tokens" / "run_id=R" / "iteration=0"
    old.mkdir(parents=True)
    (old / "part-0.parquet").write_text("old tokens")  # replaced by the new file
    (old / "part-9.parquet").write_text("stale tokens")  # an earlier attempt's extra file

    real, calls = os.replace, []

    def fails_on_the_second_move(a, b):
        calls.append(a)
        if len(calls) == 2 and str(a).endswith(".parquet"):
            raise OSError("disk went away")
        return real(a, b)

    monkeypatch.setattr(os, "replace", fails_on_the_second_move)
    with pytest.raises(OSError, match="disk went away"):
        publish_iteration.fn(str(data), str(stage), "R", 0)
    monkeypatch.setattr(os, "replace", real)

    def published():
        return {str(p.relative_to(data)): p.read_text() for p in sorted(data.rglob("*.parquet"))}

    want = {
        "rollouts/run_id=R/iteration=0/part-0.parquet": "new rollouts",
        "tokens/run_id=R/iteration=0/part-0.parquet": "new tokens",
    }
    publish_iteration.fn(str(data), str(stage), "R", 0)  # the retry
    assert published() == want
    publish_iteration.fn(str(data), str(stage), "R", 0)  # once more, after success
    assert published() == want
    # a staged file that vanished from both places is an error, not a silent loss
    (data / "rollouts" / "run_id=R" / "iteration=0" / "part-0.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="part-0.parquet of rollouts"):
        publish_iteration.fn(str(data), str(stage), "R", 0)

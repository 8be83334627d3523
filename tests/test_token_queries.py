"""Each named query of sql/queries/ on hand-made data with answers worked out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import pytest
import torch

from gae.db import connect, list_queries, query_params, run_query
from gae.rewards import ScoreTable
from gae.store import write_iteration
from gae.store_views import register_views
from tests.test_store import make_batch

QUERIES = Path(__file__).resolve().parents[1] / "sql" / "queries"
NAMES = [
    "advantage_by_position",
    "top_tokens",
    "reward_trend",
    "kl_by_iteration",
    "worst_rollouts",
    "explained_variance",
]


def run(con, name: str, **params) -> list[dict]:
    """Through gae.db.run_query, as `gae query NAME --param k=v` runs it (header defaults fill gaps)."""
    rel = run_query(con, name, params)
    cols = [d[0] for d in rel.description]
    return [dict(zip(cols, row, strict=True)) for row in rel.fetchall()]


class BracketTokenizer:
    def token_texts(self, ids):
        return [f"[{i}]" for i in ids]


def _write(data_dir, run_id, iteration, rows, scores, finish):
    """rows: per rollout (ids, advantages, values, returns, kl); logprob -1, ref_logprob -1 - kl."""
    B, T = len(rows), max(len(r[0]) for r in rows)

    def grid(k):
        out = torch.zeros(B, T)
        for b, r in enumerate(rows):
            out[b, : len(r[k])] = torch.tensor(r[k], dtype=torch.float32)
        return out

    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, r in enumerate(rows):
        mask[b, : len(r[0])] = True
    kl = grid(4)
    batch = make_batch(
        mask_rows=mask.tolist(),
        rollout_ids=[f"{run_id}-{iteration}-{chr(97 + b)}" for b in range(B)],
        prompt_ids=["p"] * B,
        group_ids=torch.zeros(B, dtype=torch.long),
        response_tokens=grid(0).long(),
        logprobs=torch.where(mask, -1.0, 0.0),
        ref_logprobs=torch.where(mask, -1.0 - kl, 0.0),
        values=grid(2),
        prompts=["prompt"] * B,
        responses=[f"response {b}" for b in range(B)],
        references=[None] * B,
        finish_reasons=finish,
    )
    total = torch.tensor(scores)
    write_iteration(
        data_dir,
        run_id=run_id,
        iteration=iteration,
        batch=batch,
        token_rewards=torch.zeros(B, T),
        kl=kl,
        advantages=grid(1),
        returns=grid(3),
        scores=ScoreTable(total=total, components={"exact": total}, weights={"exact": 1.0}),
        tokenizer=BracketTokenizer(),
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    # Run r1 is written first, so r2 is "the run written last" that queries default to.
    _write(d, "r1", 0, [([1, 2], [9.0, 9.0], [0.0, 0.0], [1.0, 1.0], [5.0, 5.0])], [100.0], ["eos"])
    # r2 iteration 0.        ids              advantages           values               returns              kl
    a = ([10, 11, 12], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.1, 0.2, 0.3])
    b = (
        [20, 21, 22, 23],
        [-1.0, -2.0, -3.0, 4.0],
        [1.0, 2.0, 3.0, 3.3],
        [1.0, 2.0, 3.0, 4.0],
        [0.0, 0.0, 0.0, 0.4],
    )
    _write(d, "r2", 0, [a, b], [1.0, -1.0], ["eos", "length"])
    # r2 iteration 1.
    c = ([30, 31], [0.5, -0.5], [1.0, 1.0], [2.0, 0.0], [0.2, 0.2])
    e = ([40], [7.0], [1.0], [1.0], [0.0])
    _write(d, "r2", 1, [c, e], [0.5, 2.0], ["eos", "eos"])
    connect(d).close()  # create the database (migrations): `gae sql` opens it read-only
    return d


@pytest.fixture(scope="module")
def con(data_dir):
    con = connect(data_dir, read_only=True)
    yield con
    con.close()


def test_every_query_has_a_description_and_param_defaults():
    listed = list_queries()
    for name in NAMES:
        assert len(listed[name]) > 10, name
        needed, defaults = query_params(name)
        # Every $param has a header default, so `gae query NAME` runs without --param.
        assert set(needed) == set(defaults), (name, needed, defaults)


def test_advantage_by_position(con):
    got = run(con, "advantage_by_position", iteration=0, bucket_size=2)
    # positions 0-1: [1, 2, -1, -2]: mean 0, sample std sqrt((1+4+1+4)/3), mean |A| 1.5
    # positions 2-3: [3, -3, 4]: mean 4/3, min -3, max 4
    assert [(r["bucket_start"], r["bucket_end"], r["n_tokens"]) for r in got] == [(0, 1, 4), (2, 3, 3)]
    assert got[0]["mean_advantage"] == 0.0 and got[0]["std_advantage"] == pytest.approx(math.sqrt(10 / 3))
    assert got[0]["mean_abs_advantage"] == 1.5
    assert got[1]["mean_advantage"] == pytest.approx(4 / 3)
    assert (got[1]["min_advantage"], got[1]["max_advantage"]) == (-3.0, 4.0)
    # Defaults: the latest run (r2), all its iterations, buckets of 32: 7 + 3 tokens in one bucket.
    assert [(r["bucket_start"], r["n_tokens"]) for r in run(con, "advantage_by_position")] == [(0, 10)]
    assert run(con, "advantage_by_position", run_id="r1")[0]["mean_advantage"] == 9.0


def test_top_tokens_with_context(con):
    got = run(con, "top_tokens", iteration=0, limit=2, context=1)
    short = [(r["side"], r["rank"], r["token"], r["advantage"], r["before"], r["after"]) for r in got]
    # top: [23] (A=4) after [22], nothing after; [12] (A=3) after [11] (its row ends there).
    # bottom: [22] (A=-3) between [21] and [23]; [21] (A=-2) between [20] and [22].
    assert short == [
        ("top", 1, "[23]", 4.0, "[22]", ""),
        ("top", 2, "[12]", 3.0, "[11]", ""),
        ("bottom", 1, "[22]", -3.0, "[21]", "[23]"),
        ("bottom", 2, "[21]", -2.0, "[20]", "[22]"),
    ]
    wide = run(con, "top_tokens", iteration=0, limit=1, context=8)
    assert [(r["before"], r["after"]) for r in wide] == [("[20][21][22]", ""), ("[20][21]", "[23]")]
    # All iterations of r2: [40] (A=7) of iteration 1 leads.
    assert run(con, "top_tokens", limit=1)[0]["token"] == "[40]"


def test_reward_trend(con):
    got = run(con, "reward_trend")
    # iteration 0: scores 1, -1 -> mean 0, std sqrt(2); lengths 3, 4; one of two ended by EOS;
    # KL sums 0.6 and 0.4 -> 0.5.  iteration 1: scores 0.5, 2 -> 1.25; lengths 2, 1; both EOS.
    assert [(r["iteration"], r["n_rollouts"]) for r in got] == [(0, 2), (1, 2)]
    assert got[0]["mean_score"] == 0.0 and got[0]["std_score"] == pytest.approx(math.sqrt(2))
    assert (got[0]["min_score"], got[0]["max_score"], got[0]["mean_length"], got[0]["eos_rate"]) == (
        -1,
        1,
        3.5,
        0.5,
    )
    assert got[0]["mean_kl_sum"] == pytest.approx(0.5)
    assert (got[1]["mean_score"], got[1]["mean_length"], got[1]["eos_rate"]) == (1.25, 1.5, 1.0)
    assert [r["mean_score"] for r in run(con, "reward_trend", run_id="r1")] == [100.0]


def test_kl_by_iteration(con):
    got = run(con, "kl_by_iteration")
    # iteration 0: 7 action tokens, KL total 1.0 -> 1/7 per token, 0.5 per sequence, max 0.4;
    # logprob - ref_logprob = kl by construction -> mean 1/7.  iteration 1: 0.4 over 3 tokens, 2 rows.
    r0, r1 = got
    assert (r0["iteration"], r0["n_action_tokens"], r0["n_rollouts"]) == (0, 7, 2)
    assert r0["mean_kl_per_token"] == pytest.approx(1 / 7, rel=1e-6)
    assert r0["mean_kl_per_sequence"] == pytest.approx(0.5, rel=1e-6)
    assert r0["max_kl"] == pytest.approx(0.4) and r0["mean_log_ratio"] == pytest.approx(1 / 7, rel=1e-6)
    assert r1["mean_kl_per_token"] == pytest.approx(0.4 / 3, rel=1e-6)
    assert r1["mean_kl_per_sequence"] == pytest.approx(0.2, rel=1e-6)


def test_worst_rollouts(con):
    # Default iteration: the run's last (1); its worst rollout scores 0.5.
    got = run(con, "worst_rollouts", limit=1)
    assert [(r["iteration"], r["rollout_id"], r["score"]) for r in got] == [(1, "r2-1-a", 0.5)]
    assert [(t["position"], t["token"], t["advantage"]) for t in got[0]["token_advantages"]] == [
        (0, "[30]", 0.5),
        (1, "[31]", -0.5),
    ]
    both = run(con, "worst_rollouts", iteration=0)
    assert [(r["rollout_id"], r["score"], len(r["token_advantages"])) for r in both] == [
        ("r2-0-b", -1.0, 4),
        ("r2-0-a", 1.0, 3),
    ]
    assert [t["advantage"] for t in both[0]["token_advantages"]] == [-1.0, -2.0, -3.0, 4.0]


def test_explained_variance(con):
    got = run(con, "explained_variance")
    # iteration 0: returns [1,2,3,1,2,3,4]: mean 16/7, var_pop = 44/7 - (16/7)^2 = 52/49.
    # residuals returns - value: six 0s and 0.7: var_pop = 0.49/7 - 0.1^2 = 0.06.
    # EV = 1 - 0.06 / (52/49) = 1 - 2.94/52.
    assert got[0]["iteration"] == 0 and got[0]["n_action_tokens"] == 7
    assert got[0]["explained_variance"] == pytest.approx(1 - 2.94 / 52, rel=1e-5)
    # iteration 1: returns [2, 0, 1] (var 2/3), values all 1 -> residuals [1, -1, 0]: EV = 1 - 1 = 0.
    assert got[1]["explained_variance"] == pytest.approx(0.0, abs=1e-6)


def test_explained_variance_is_null_for_constant_returns(tmp_path):
    # returns all 0.3 (not exact in binary): Var(returns) is 0, so the ratio is undefined -> NULL.
    _write(tmp_path, "c", 0, [([1, 2, 3], [0.0] * 3, [0.1, 0.2, 0.3], [0.3] * 3, [0.0] * 3)], [0.0], ["eos"])
    con = duckdb.connect()
    register_views(con, tmp_path)
    got = run(con, "explained_variance")
    assert got[0]["explained_variance"] is None and got[0]["var_returns"] == pytest.approx(0.0, abs=1e-12)


def test_queries_on_an_empty_store_return_no_rows(tmp_path):
    con = duckdb.connect()
    register_views(con, tmp_path)
    for name in NAMES:
        assert run(con, name) == [], name


def test_gae_sql_and_gae_query_commands(data_dir):
    """`gae sql "select token, advantage from tokens ..."` and `gae query` on a stored run."""
    from typer.testing import CliRunner

    from gae.cli import _register_all, app

    if not app.registered_commands:  # another test module may have registered them already
        _register_all()
    d = str(data_dir)
    sql = "select token, advantage from tokens order by advantage desc, token limit 3"
    res = CliRunner().invoke(app, ["sql", sql, "--data-dir", d, "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == [
        {"token": "[1]", "advantage": 9.0},
        {"token": "[2]", "advantage": 9.0},
        {"token": "[40]", "advantage": 7.0},
    ]
    args = ["query", "reward_trend", "--param", "run_id=r1", "--data-dir", d, "--format", "json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert [r["mean_score"] for r in json.loads(res.output)] == [100.0]

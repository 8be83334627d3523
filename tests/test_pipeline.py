"""The Prefect pipeline end to end on real components: DuckDB file, Parquet store, MLflow
sqlite tracking and registry, a real Prefect API (the test harness or a real server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.slow

SMALL_CORPUS = (
    "The river ran past the mill and the miller counted the sacks. He was a careful man. "
    "Every evening he wrote the numbers in a book, and every morning he read them again. "
    "When the flood came, the book was all that he saved. The village laughed at him. "
    "But in the spring the numbers told him which fields had given the most grain.\n\n"
)


def write_corpus(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(40):
        (root / f"doc{i:02d}.txt").write_text(SMALL_CORPUS.replace("river", f"river {i}") * 3)
    return root


def smoke_overrides(data_dir: Path, corpus: Path) -> list[str]:
    return [f"data_dir={data_dir}", f'corpus=["{corpus}"]', "run_name=smoke"]


def test_smoke_pipeline_end_to_end(smoke_run):
    """On the session's smoke run (tests/conftest.py `smoke_run`: this module's corpus and
    overrides, run once and shared with the modules that read its store)."""
    from gae.tracking import get_client

    data_dir, cfg, result = smoke_run["data_dir"], smoke_run["cfg"], smoke_run["result"]
    print(f"smoke pipeline wall time {smoke_run['wall_s']:.1f} s")
    assert len(result["iterations"]) == cfg.iterations

    # DuckDB: the corpus, and per-token rows of every iteration through the views.
    con = duckdb.connect(str(data_dir / "gae.duckdb"), read_only=True)
    try:
        assert con.sql("select count(*) from documents").fetchall()[0][0] > 0
    finally:
        con.close()
    from gae import db

    con = db.connect(data_dir, read_only=True)
    try:
        rows = con.sql(
            "select iteration, count(*) n, count(distinct (rollout_id, position)) d, "
            "count(*) filter (where is_action and train_logprob is null) missing_train_lp "
            "from tokens group by iteration order by iteration"
        ).fetchall()
        assert [r[0] for r in rows] == list(range(cfg.iterations))
        assert all(r[1] == r[2] > 0 for r in rows)  # no duplicate token rows
        assert all(r[3] == 0 for r in rows)  # the trainer's log-probs were filled in
        n_rollouts = con.sql("select count(*) from rollouts").fetchall()[0][0]
        assert n_rollouts == cfg.iterations * cfg.prompts_per_iteration * cfg.rollout.n_samples
        top = con.sql("select token, advantage from tokens order by advantage desc limit 5").fetchall()
        assert len(top) == 5
    finally:
        con.close()
    assert not list((data_dir / "runs").rglob("stage/*/*/*/*.parquet"))  # nothing left in staging

    # MLflow: one finished run with per-iteration metrics, and a registered champion.
    client = get_client(data_dir)
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    hist = client.get_metric_history(run.info.run_id, "critic/score/mean")
    assert sorted(m.step for m in hist) == list(range(cfg.iterations))
    assert {
        "actor/pg_loss",
        "critic/vf_explained_var",
        "eval/reward/mean",
        "timing_s/adv",
        "timing_s/gen",
        "timing_s/ref",
        "timing_s/values",
        "timing_s/store",
        "timing_s/update_actor",
        "timing_s/step",
        "perf/throughput",
    } <= set(run.data.metrics)
    # the pretrained policy's samples and each iteration's have tables of their own
    tables = {a.path for a in client.list_artifacts(run.info.run_id, "generations")}
    assert tables == {"generations/baseline.json"} | {
        f"generations/iter-{i:05d}.json" for i in range(cfg.iterations)
    }
    # champion only when the policy is not worse than the pretrained one (issue 17)
    reg = result["registered"]
    baseline = run.data.metrics["eval/reward_baseline"]
    assert reg["promoted"] == (reg["eval_score"] >= baseline)
    if reg["promoted"]:
        mv = client.get_model_version_by_alias(cfg.registry.model_name, "champion")
        assert str(mv.version) == str(reg["version"])


def _run_cli(args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "gae.cli", *args], env=env, **kw)


def test_crash_during_an_iteration_then_rerun_resumes(tmp_path):
    """A real subprocess killed with SIGKILL during iteration 1, rerun with the same command."""
    data_dir = tmp_path / "data"
    corpus = write_corpus(tmp_path / "corpus")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "GAE_DATA_DIR": str(data_dir)}
    args = [
        "run",
        "--preset",
        "smoke",
        "--corpus",
        str(corpus),
        "--run-name",
        "crash",
        "--set",
        "iterations=3",
    ]
    state_file = data_dir / "runs" / "crash.state.json"
    proc = _run_cli(args, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if state_file.exists() and json.loads(state_file.read_text())["last_completed_iteration"] >= 0:
                break
            if proc.poll() is not None:
                pytest.fail(f"the first run ended (code {proc.returncode}) before it could be killed")
            time.sleep(0.2)
        else:
            pytest.fail("iteration 0 never completed")
        time.sleep(1.0)  # well inside iteration 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = json.loads(state_file.read_text())
    assert before["status"] == "running" and before["last_completed_iteration"] in (0, 1)
    rerun = _run_cli(args, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out[-3000:]
    after = json.loads(state_file.read_text())
    assert after["run_id"] == before["run_id"] and after["mlflow_run_id"] == before["mlflow_run_id"]
    assert after["status"] == "finished" and after["last_completed_iteration"] == 2
    assert [h["iteration"] for h in after["history"]] == [0, 1, 2]
    con = duckdb.connect()
    tokens = str(data_dir / "tokens" / "**" / "*.parquet")
    rows = con.sql(
        f"select iteration, count(*), count(distinct (rollout_id, position)) from read_parquet('{tokens}', "
        "hive_partitioning=true) group by 1 order by 1"
    ).fetchall()
    assert [r[0] for r in rows] == [0, 1, 2]
    assert all(r[1] == r[2] for r in rows)  # no duplicate rows
    files = sorted(p.relative_to(data_dir) for p in (data_dir / "tokens").rglob("*.parquet"))
    assert len(files) == 3, files  # one file per iteration, nothing partial

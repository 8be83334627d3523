"""Failure cases end to end through the command line (issue 12): each runs `python -m gae.cli`
in a subprocess on real files and asserts exit code 1 (2 for usage), exactly one `error:` line
that names the file, and no traceback.

One tiny data directory (an ingested corpus, two stored iterations of real Parquet, a run
state) is built once per module and copied for each test that breaks something.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def gae(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gae.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        timeout=300,
    )


def error_line(res: subprocess.CompletedProcess, code: int = 1) -> str:
    """The one `error:` line of a failed command; fails on a traceback or a second error line."""
    out = res.stdout + res.stderr
    assert res.returncode == code, (res.returncode, out)
    assert "Traceback" not in out, out
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, out
    return lines[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """An ingested corpus and two stored iterations of a finished run (real Parquet)."""
    from gae.paths import DataDir
    from gae.runstate import RunState
    from gae.store import write_iteration
    from tests.test_store import make_batch, outputs

    root = tmp_path_factory.mktemp("failures")
    corpus = root / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": f"Document {i} says something. It ends here."}) + "\n" for i in range(6))
    )
    dd = DataDir.resolve(root / "data")
    res = gae("ingest", str(corpus), "--data-dir", str(dd.root))
    assert res.returncode == 0, res.stderr
    for it in (0, 1):
        batch = make_batch(seed=it)
        write_iteration(dd.root, run_id="old-run", iteration=it, batch=batch, **outputs(batch, seed=it))
    dd.runs.mkdir(parents=True, exist_ok=True)
    RunState(
        run_name="old", run_id="old-run", config_hash="x", last_completed_iteration=1, status="finished"
    ).save(dd.runs)
    return dd.root


@pytest.fixture
def data_dir(built, tmp_path) -> Path:
    d = tmp_path / "data"
    shutil.copytree(built, d)
    return d


# ------------------------------------------------------------------ gae sql: files outside the data directory


@pytest.mark.parametrize(
    "query",
    [
        "select * from read_text('/etc/passwd')",
        "select * from read_csv('/etc/passwd')",
        "select * from glob('/etc/*')",
        "select count(*) from read_blob('/etc/hostname')",
    ],
)
def test_sql_cannot_read_files_outside_the_data_directory(built, query):
    line = error_line(gae("sql", query, "--data-dir", str(built)))
    assert "outside the data directory" in line and "--allow-external" in line and "/etc/" in line, line


def test_sql_file_name_as_a_table_is_not_scanned(built):
    # DuckDB's replacement scan of a quoted path is off with external access: the name is a missing table
    line = error_line(gae("sql", "select * from '/etc/passwd'", "--data-dir", str(built)))
    assert "/etc/passwd does not exist" in line, line


def test_sql_reads_files_inside_the_data_directory_and_outside_with_allow_external(built, tmp_path):
    part = next((built / "tokens").rglob("*.parquet"))
    res = gae(
        "sql", f"select count(*) as n from read_parquet('{part}')", "--data-dir", str(built), "-f", "json"
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)[0]["n"] > 0
    mine = tmp_path / "mine.csv"
    mine.write_text("a,b\n1,2\n3,4\n")
    q = f"select sum(a + b) as s from read_csv('{mine}')"
    assert "outside the data directory" in error_line(gae("sql", q, "--data-dir", str(built)))
    res = gae("sql", q, "--data-dir", str(built), "-f", "json", "--allow-external")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == [{"s": 10}]


def test_named_queries_and_store_views_still_work_when_confined(built):
    res = gae("query", "reward_trend", "--data-dir", str(built), "-f", "json")
    assert res.returncode == 0, res.stderr
    assert [r["iteration"] for r in json.loads(res.stdout)] == [0, 1]
    res = gae("sql", "select count(*) as n from tokens", "--data-dir", str(built), "-f", "json")
    assert res.returncode == 0 and json.loads(res.stdout)[0]["n"] > 0, res.stderr
    # a setting cannot be changed back, even by a query that only reads it
    line = error_line(gae("sql", "set enable_external_access = true", "--data-dir", str(built)))
    assert "runs queries only" in line


# ------------------------------------------------------------------ broken store parts


def test_a_truncated_store_part_is_one_line_naming_it(data_dir):
    part = data_dir / "tokens" / "run_id=old-run" / "iteration=1" / "part-0.parquet"
    part.write_bytes(part.read_bytes()[:100])
    line = error_line(gae("sql", "select count(*) from tokens", "--data-dir", str(data_dir)))
    assert f"the store part {part} is unreadable" in line and "gae doctor --fix" in line, line
    # the rollouts view still reads, and named queries over it work
    res = gae("query", "reward_trend", "--data-dir", str(data_dir), "-f", "json")
    assert res.returncode == 0 and len(json.loads(res.stdout)) == 2, res.stderr


def test_damage_inside_a_store_part_is_found_and_named(data_dir):
    part = data_dir / "rollouts" / "run_id=old-run" / "iteration=0" / "part-0.parquet"
    raw = bytearray(part.read_bytes())
    raw[100:1500] = bytes((b * 7 + 3) % 256 for b in raw[100:1500])  # pages, not the footer
    part.write_bytes(bytes(raw))
    line = error_line(gae("sql", "select * from rollouts", "--data-dir", str(data_dir)))
    assert f"rollouts: the store part {part} is unreadable" in line, line


# ------------------------------------------------------------------ a broken database


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_a_broken_database_is_one_line_naming_it(data_dir, damage):
    db = data_dir / "gae.duckdb"
    if damage == "empty":
        db.write_bytes(b"")
    elif damage == "truncated":
        db.write_bytes(db.read_bytes()[:4096])
    else:
        db.write_bytes(os.urandom(300_000))
    # each command that opens it; `gae run` before Prefect starts (nothing listens on that API)
    commands = [("sql", "select 1")] + (
        [("query", "corpus_summary"), ("run", "--preset", "smoke")] if damage == "truncated" else []
    )
    for args in commands:
        line = error_line(
            gae(*args, "--data-dir", str(data_dir), env={"PREFECT_API_URL": "http://127.0.0.1:9"})
        )
        assert f"the database {db} cannot be opened" in line and "gae doctor --fix" in line, (args, line)
    # gae status still lists the runs, and says what is wrong with the database
    res = gae("status", "--data-dir", str(data_dir), env={"COLUMNS": "200"})
    assert res.returncode == 0 and "old-run" in res.stdout and "Traceback" not in res.stderr
    assert f"warning: the database {db} cannot be opened" in res.stderr


# ------------------------------------------------------------------ config files and values


def test_config_file_errors_name_the_file(tmp_path):
    """One subprocess for the command line's contract (exit code 1, one `error:` line, no
    traceback, nothing created); the other files through the same command in this process,
    as the line `gae.errors.user_message` makes of the error."""
    from typer.testing import CliRunner

    from gae.cli import _register_all, app
    from gae.errors import user_message

    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout: {n_samples: 4\n  bad: [\n")
    line = error_line(gae("run", "-c", str(bad), "--data-dir", str(tmp_path / "d")))
    assert f"config file {bad}: not valid YAML (line 2 column 6" in line, line
    assert not (tmp_path / "d").exists()

    _register_all()
    runner = CliRunner()

    def message(*args: str) -> str:
        res = runner.invoke(app, list(args))
        assert res.exit_code != 0 and res.exception is not None, res.output
        return user_message(res.exception)

    assert f"config file {tmp_path} is a folder" in message("config", "-c", str(tmp_path))
    assert f"config file {tmp_path} is a folder" in message(
        "run", "-c", str(tmp_path), "--data-dir", str(tmp_path / "d")
    )
    assert f"config file {bad}: not valid YAML (line 2 column 6" in message("config", "-c", str(bad))
    bad.write_bytes(b"\xff\xfe\x00")
    assert f"config file {bad} is not UTF-8" in message("config", "-c", str(bad))
    assert f"config file {tmp_path / 'none.yaml'} does not exist" in message(
        "config", "-c", str(tmp_path / "none.yaml")
    )
    assert not (tmp_path / "d").exists()


def test_sizes_a_run_would_fail_on_are_refused_before_it_starts(tmp_path):
    # (max_new_tokens >= block_size: tests/test_recovery.py, in process)
    res = gae("run", "--preset", "smoke", "--set", "model.n_head=3", "--data-dir", str(tmp_path))
    assert "model.n_embd=64 is not divisible by model.n_head=3" in error_line(res)
    assert not (tmp_path / "gae.duckdb").exists()  # refused before anything ran


def test_usage_errors_are_one_line_with_exit_code_2():
    for args, words in ((("run", "--nope"), "No such option: --nope"), (("sql",), "Missing argument")):
        line = error_line(gae(*args), code=2)
        assert words in line and "--help" in line, line


# ------------------------------------------------------------------ killed runs, broken run states


def _hold_and_kill(lock: Path, what: str) -> int:
    """A process takes the writer lock, then is killed with SIGKILL; returns its pid."""
    code = (
        f"from gae.lock import writer_lock\nwith writer_lock({str(lock)!r}, what={what!r}):\n"
        "    print('held', flush=True)\n    import time; time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return proc.pid


def test_status_after_sigkill_shows_the_run_interrupted(data_dir):
    from gae.runstate import RunState

    RunState(run_name="live", run_id="live-1", config_hash="x", last_completed_iteration=0).save(
        data_dir / "runs"
    )
    pid = _hold_and_kill(data_dir / ".writer.lock", "rl-pipeline run live")
    res = gae("status", "--data-dir", str(data_dir), env={"COLUMNS": "250"})
    assert res.returncode == 0, res.stderr
    assert f"interrupted (pid {pid} not running)" in res.stdout and "a run holds" not in res.stdout
    rows = {r["run_id"]: r for r in json.loads(gae("status", "--data-dir", str(data_dir), "--json").stdout)}
    assert rows["live-1"]["status"] == "interrupted" and rows["live-1"]["recorded_status"] == "running"
    assert rows["old-run"]["status"] == "finished"


def test_a_broken_run_state_names_its_file(data_dir):
    state = data_dir / "runs" / "old.state.json"
    state.write_text('{"run_name": "old", "run_id": "unterminated')
    res = gae("status", "--data-dir", str(data_dir))
    assert res.returncode == 0 and f"warning: run state {state} is not valid JSON" in res.stderr, res.stderr
    line = error_line(gae("run", "--run-name", "old", "--data-dir", str(data_dir)))
    assert f"run state {state} is not valid JSON (Unterminated string" in line and "gae doctor --fix" in line


# ------------------------------------------------------------------ a full disk (real tmpfs)


def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
    from tests.test_recovery import NO_TMPFS

    if NO_TMPFS:
        pytest.skip(NO_TMPFS)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fill = "dd if=/dev/zero of=$M/filler bs=4k 2>/dev/null; "
    cmd = f"M={mnt}; mount -t tmpfs -o size=256k tmpfs $M && {fill}exec {sys.executable} -m gae.cli run --data-dir $M/data"
    res = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)  # fmt: skip
    line = error_line(res)
    assert (
        line
        == f"error: no space left on device writing {mnt}/data/.writer.lock; free space and rerun the same command to resume"
    )


# ------------------------------------------------------------------ gae doctor


def test_doctor_reports_then_fixes_and_everything_reads_again(data_dir):
    part = data_dir / "tokens" / "run_id=old-run" / "iteration=1" / "part-0.parquet"
    part.write_bytes(part.read_bytes()[:100])
    (data_dir / "models" / ".tmp-gpt-abc.k3j2").mkdir(parents=True)
    pid = _hold_and_kill(data_dir / ".writer.lock", "rl-pipeline run old")
    res = gae("doctor", "--data-dir", str(data_dir))
    assert res.returncode == 1 and "Traceback" not in res.stdout + res.stderr
    assert f"error   store      {part}: unreadable Parquet part" in res.stdout
    assert ".tmp-gpt-abc.k3j2" in res.stdout and f"pid {pid}" in res.stdout
    report = json.loads(gae("doctor", "--data-dir", str(data_dir), "--json").stdout)
    assert report["healthy"] is False and {f["check"] for f in report["findings"] if not f["ok"]} == {
        "store", "orphan", "lock"
    }  # fmt: skip
    res = gae("doctor", "--data-dir", str(data_dir), "--fix")
    assert res.returncode == 0 and "moved to" in res.stdout, res.stdout + res.stderr
    assert not part.exists() and list(
        (data_dir / "quarantine").glob("*/tokens/run_id=old-run/iteration=1/part-0.parquet")
    )
    report = json.loads(gae("doctor", "--data-dir", str(data_dir), "--json").stdout)
    assert report["healthy"] is True and not [f for f in report["findings"] if not f["ok"]]
    res = gae(
        "sql", "select count(distinct iteration) as n from tokens", "--data-dir", str(data_dir), "-f", "json"
    )
    assert res.returncode == 0 and json.loads(res.stdout) == [{"n": 1}], res.stderr


# ------------------------------------------------------------------ a whole run: broken old part, full disk at registration

# Injected into the `gae run` subprocess (sitecustomize runs at interpreter start): the disk
# "fills up" when the version is registered, after the model was logged, and the run's cleanup
# (marking it failed in MLflow) meets the same full disk.
FULL_AT_REGISTRATION = """
import errno, os
if os.environ.get("GAE_TEST_FULL_AT_REGISTRATION") == "1":
    import mlflow
    import gae.tracking

    def _full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    mlflow.register_model = _full
    gae.tracking.Tracker.finish = _full
"""


@pytest.mark.slow
def test_a_run_past_a_broken_old_part_and_a_full_disk_at_registration_recovers(
    tmp_path, prefect_api, smoke_run, smoke_copy
):
    """A truncated part of a finished run does not stop a new run; a full disk at registration
    (cleanup failing too) is one error line naming mlflow.db, with no traceback and the run shown
    as interrupted; rerunning the same command registers exactly one model and finishes.

    On a copy of the session's smoke run (`smoke_copy`: its corpus ingested, its model
    pretrained), the runs here sample, train and register only, in their own experiment and
    under their own model name."""
    from prefect.settings import PREFECT_API_URL

    from gae.tracking import get_client

    data_dir = smoke_copy
    smoke_id = smoke_run["result"]["run_id"]
    part = next((data_dir / "tokens" / f"run_id={smoke_id}").rglob("*.parquet"))
    part.write_bytes(part.read_bytes()[:100])
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(FULL_AT_REGISTRATION)
    env = {
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PYTHONPATH": f"{hooks}{os.pathsep}{REPO}",
    }
    corpus = smoke_run["cfg"].corpus
    args = ["run", "--preset", "smoke", *[a for c in corpus for a in ("--corpus", c)],
            "--data-dir", str(data_dir), "--run-name", "full", "--set", "iterations=1",
            "--set", "prompts_per_iteration=2", "--set", "eval.n_prompts=2",
            "--set", "registry.experiment=full-disk", "--set", "registry.model_name=full-policy"]  # fmt: skip
    first = gae(*args, env={**env, "GAE_TEST_FULL_AT_REGISTRATION": "1"})
    line = error_line(first)
    db = data_dir / "mlflow.db"
    assert (
        line
        == f"error: no space left on device writing {db}; free space and rerun the same command to resume"
    )
    assert "could not mark run" in first.stderr  # the cleanup's own failure is logged, not raised
    status = gae("status", "--data-dir", str(data_dir), "--json")
    full = next(r for r in json.loads(status.stdout) if r["run_name"] == "full")
    assert full["status"] == "interrupted" and full["last_completed_iteration"] == 0

    second = gae(*args, env=env)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    status = gae("status", "--data-dir", str(data_dir), "--json")
    full = next(r for r in json.loads(status.stdout) if r["run_name"] == "full")
    assert full["status"] == "finished"
    client = get_client(data_dir)
    run_id = full["mlflow_run_id"]
    models = client.search_logged_models(experiment_ids=[client.get_run(run_id).info.experiment_id])
    assert len(models) == 1  # the model logged before the disk filled was registered, not logged again
    assert [int(v.version) for v in client.search_model_versions("name = 'full-policy'")] == [1]

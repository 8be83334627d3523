"""What breaks, and how it is told and recovered from (issue 12), on real files: a full disk on
a real tmpfs (every writer library), broken store parts behind the views, run states and
locks left by a killed process, the doctor's quarantine, config values that would fail a
run late, a corpus too small to pretrain on, metrics of a redone iteration, and a
registration interrupted after logging its model (real MLflow sqlite store)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gae.errors import DiskFull, as_disk_full, user_message, writing
from gae.paths import DataDir

REPO = Path(__file__).resolve().parents[1]


def _can_mount_tmpfs() -> str | None:
    """None when `unshare -rm` can mount a tmpfs here, else why not (the skip reason)."""
    if shutil.which("unshare") is None:
        return "no unshare(1) on this machine"
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d"],
        capture_output=True,
        text=True,
    )
    return (
        None if probe.returncode == 0 else f"cannot mount a tmpfs in a user namespace: {probe.stderr.strip()}"
    )


NO_TMPFS = _can_mount_tmpfs()

# Runs inside a private mount namespace: the data directory is a small tmpfs that a filler file
# has filled, so every write below meets a real ENOSPC from the library doing it.
FULL_DISK_SCRIPT = textwrap.dedent(
    """
    import json, os, shutil, sys
    from pathlib import Path
    import torch
    from gae.errors import DiskFull
    from gae.paths import DataDir

    root = Path(sys.argv[1]); dd = DataDir(root / "data").ensure()
    shutil.copyfile(sys.argv[2], dd.mlflow_db)
    from gae.tracking import Tracker
    tracker = Tracker.start(dd, run_id="r")  # the MLflow run exists before the disk fills
    try:
        with open(root / "filler", "wb") as f:
            while True:
                f.write(b"x" * 4096)
    except OSError:  # full (the write or the final flush)
        pass
    results = {}

    def probe(name, fn):
        try:
            fn()
            results[name] = {"type": None}
        except BaseException as e:
            results[name] = {"type": type(e).__name__, "msg": str(e), "disk_full": isinstance(e, DiskFull)}

    from gae.fsutil import atomic_write_json
    probe("run_state", lambda: atomic_write_json(dd.runs / "x.state.json", {"a": list(range(10000))}))

    from gae.checkpoint import checkpoint_dir, save_checkpoint
    from gae.models import ModelConfig, build_model
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32), 300)
    opt = torch.optim.AdamW(model.parameters())
    probe("checkpoint", lambda: save_checkpoint(checkpoint_dir(dd.run_dir("r"), 0), model=model, iteration=0,
                                                optimizer=opt))

    from gae.fsutil import atomic_dir
    from gae.models import save_model
    def pretrain_save():
        with atomic_dir(dd.models / "gpt-abc") as tmp:
            save_model(model, tmp)
    probe("pretrained_model", pretrain_save)

    sys.path.insert(0, sys.argv[3])
    from tests.test_store import make_batch, outputs
    from gae.store import write_iteration
    batch = make_batch()
    probe("store", lambda: write_iteration(dd.root, run_id="r", iteration=0, batch=batch, **outputs(batch)))

    probe("metrics", lambda: tracker.log_metrics({f"m/{i}": float(i) for i in range(2000)}, step=0))

    leftovers = [str(p) for p in root.rglob("*") if p.name.startswith((".tmp-", ".old-"))]
    print("RESULTS=" + json.dumps({"results": results, "leftovers": leftovers}), flush=True)
    # The results are out: skip the interpreter's shutdown, whose finalizers of the libraries
    # loaded above took 2-7 s here, longer than the probes.
    os._exit(0)
    """
)


@pytest.mark.skipif(NO_TMPFS is not None, reason=str(NO_TMPFS))
def test_a_real_full_disk_is_reported_as_such_naming_the_file(tmp_path, empty_store):
    script = tmp_path / "full.py"
    script.write_text(FULL_DISK_SCRIPT)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cmd = (
        f"mount -t tmpfs -o size=2m tmpfs {mnt} && exec {sys.executable} {script} {mnt} {empty_store} {REPO}"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
    res = subprocess.run(
        ["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True, env=env, timeout=300
    )
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULTS=")), None)
    assert line is not None, res.stdout[-2000:] + res.stderr[-3000:]
    got = json.loads(line.removeprefix("RESULTS="))
    where = {
        "run_state": "runs/x.state.json",
        "checkpoint": "runs/r/checkpoints/iter-00000",
        "pretrained_model": "models/gpt-abc",
        "store": "tokens/run_id=r/iteration=0/part-0.parquet",
        "metrics": "mlflow.db",
    }
    for name, r in got["results"].items():
        # torch (short write), safetensors and polars (os error 28), json (OSError), sqlite ("disk is full")
        assert r["disk_full"], (name, r)
        assert (
            "no space left on device writing" in r["msg"]
            and "free space and rerun the same command" in r["msg"]
        )
        assert f"writing {mnt}/data/{where[name]};" in r["msg"], (name, r["msg"])
    assert got["leftovers"] == []  # every atomic writer removed its temporary


def test_writing_names_the_file_for_each_library_wording(tmp_path):
    path = tmp_path / "x.bin"
    cases = [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
        RuntimeError("parquet: File out of specification: underlying IO error: StorageFull"),
        RuntimeError("(sqlite3.OperationalError) database or disk is full"),
    ]
    for exc in cases:
        with pytest.raises(DiskFull) as info, writing(path):
            raise exc
        assert (
            str(info.value)
            == f"no space left on device writing {path}; free space and rerun the same command to resume"
        )
        assert info.value.errno == errno.ENOSPC and info.value.__cause__ is exc
    # torch's short write has no errno: a full disk only when little space is left
    short = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert as_disk_full(short, tmp_path) is None  # this disk has room: not a full disk
    with pytest.raises(RuntimeError, match="unexpected pos"), writing(path):
        raise short
    # anything else passes through unchanged
    with pytest.raises(KeyError), writing(path):
        raise KeyError("x")
    # and the CLI's line for a full disk raised anywhere below names the file
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        except OSError as inner:
            raise RuntimeError("task failed") from inner
    except RuntimeError as outer:
        assert (
            user_message(outer)
            == f"no space left on device writing {path}; free space and rerun the same command to resume"
        )


def test_user_message_is_one_line_for_each_kind():
    import duckdb
    import yaml

    try:
        duckdb.connect().sql("select * from nope")
    except duckdb.Error as e:
        msg = user_message(e)
    assert msg.startswith("duckdb: Catalog Error: Table with name nope does not exist") and "\n" not in msg
    try:
        yaml.safe_load("a: [")
    except yaml.YAMLError as e:
        assert "\n" not in user_message(e) and user_message(e).startswith("yaml: ")
    assert (
        user_message(IsADirectoryError(21, "Is a directory", "/x"))
        == "/x is a folder; a file was expected there"
    )
    assert "unexpected: rerun with --debug" in user_message(KeyError("k"))


# ------------------------------------------------------------------ store views over a broken part


def test_a_broken_part_fails_only_its_view_naming_the_part(tmp_path):
    import duckdb

    from gae.store import partition_path, write_iteration
    from gae.store_views import broken_parts, check_part, register_views
    from tests.test_store import make_batch, outputs

    for it in (0, 1):
        batch = make_batch(seed=it)
        write_iteration(tmp_path, run_id="r", iteration=it, batch=batch, **outputs(batch, seed=it))
    bad = partition_path(tmp_path, "tokens", "r", 1)
    bad.write_bytes(bad.read_bytes()[:200])  # truncated: no footer
    assert check_part(bad) is not None and [p for p, _ in broken_parts(tmp_path, "tokens")] == [bad]
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    register_views(con, tmp_path)  # opens: a new run's reads of prompts are not blocked
    assert con.sql("select count(*) from rollouts").fetchall()[0][0] == 6  # the other table reads
    with pytest.raises(duckdb.Error, match=rf"tokens: the store part {bad} is unreadable .*gae doctor --fix"):
        con.sql("select count(*) from tokens").fetchall()
    assert [c for c, *_ in con.sql("describe tokens").fetchall()][:2] == ["run_id", "iteration"]
    # damage inside the data (the footer intact) is found by the full check
    good = partition_path(tmp_path, "rollouts", "r", 0)
    raw = bytearray(good.read_bytes())
    raw[100:1500] = bytes((b * 7 + 3) % 256 for b in raw[100:1500])
    good.write_bytes(bytes(raw))
    assert check_part(good) is None and check_part(good, full=True) is not None


# ------------------------------------------------------------------ doctor


def _build(root: Path) -> DataDir:
    from gae.ingest import ingest
    from gae.runstate import RunState
    from gae.store import write_iteration
    from tests.test_store import make_batch, outputs

    dd = DataDir.resolve(root).ensure()
    corpus = root.parent / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"Document {i}. It ends here."}) + "\n" for i in range(4)))
    ingest([str(corpus)], data_dir=dd)
    for it in (0, 1):
        batch = make_batch(seed=it)
        write_iteration(dd.root, run_id="r", iteration=it, batch=batch, **outputs(batch, seed=it))
    RunState(run_name="r", run_id="r", config_hash="x", last_completed_iteration=1, status="finished").save(
        dd.runs
    )
    return dd


def test_doctor_finds_each_problem_and_fix_quarantines_without_deleting(tmp_path):
    from gae import doctor
    from gae.store import partition_path

    dd = _build(tmp_path / "data")
    assert not doctor.check(dd).problems
    part = partition_path(dd, "tokens", "r", 1)
    part.write_bytes(part.read_bytes()[:100])
    truncated = part.read_bytes()
    orphan = dd.models / ".tmp-gpt-abc.x1y2"  # a pretraining killed before its rename
    orphan.mkdir(parents=True)
    (orphan / "model.safetensors").write_bytes(b"half")
    (dd.runs / "bad.state.json").write_text('{"run_name": "bad", "run_id": "unterminated')
    (dd.runs / "live.state.json").write_text(
        json.dumps({"run_name": "live", "run_id": "live-1", "config_hash": "x", "status": "running"})
    )
    # a lock record left by a process that was killed (its flock died with it)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from gae.lock import writer_lock\nwith writer_lock({str(dd.lock)!r}, what='rl-pipeline run live'):\n"
         "    print('held', flush=True)\n    import time; time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    db_bytes = dd.db.read_bytes()

    report = doctor.check(dd)
    kinds = {(f.check, Path(f.path).name) for f in report.problems}
    assert ("store", "part-0.parquet") in kinds and ("orphan", orphan.name) in kinds
    assert ("run_state", "bad.state.json") in kinds and ("lock", ".writer.lock") in kinds
    live = next(f for f in report.problems if f.path.endswith("live.state.json"))
    assert f"interrupted (pid {holder.pid} not running)" in live.problem and live.severity == "warning"
    assert report.unresolved  # errors: the store part and the broken state
    assert not (dd.root / "quarantine").exists()  # check changes nothing

    fixed = doctor.fix(dd)
    q = Path(fixed.quarantine)
    moved = {Path(m["path"]) for m in json.loads((q / "note.json").read_text())["items"] if "now" in m}
    rollouts_part = partition_path(dd, "rollouts", "r", 1)
    assert moved == {part, rollouts_part, orphan, dd.runs / "bad.state.json"}
    for p in moved:  # moved, not deleted: same relative path under quarantine/
        assert not p.exists() and (q / p.relative_to(dd.root)).exists()
    assert (q / "tokens/run_id=r/iteration=1/part-0.parquet").read_bytes() == truncated
    assert "bad.state.json" in (q / "NOTE.md").read_text()
    assert dd.lock.read_text() == "" and dd.db.read_bytes() == db_bytes
    after = doctor.check(dd)
    assert not after.unresolved and [f.check for f in after.problems] == [
        "run_state"
    ]  # only the interrupted run

    # a database DuckDB cannot open: quarantined, and the next ingest rebuilds it
    dd.db.write_bytes(b"\0" * 5000)
    assert [f.check for f in doctor.check(dd).unresolved] == ["database"]
    doctor.fix(dd)
    assert not dd.db.exists() and not doctor.check(dd).unresolved


# ------------------------------------------------------------------ locks, run states, config, corpus


def test_status_tells_a_killed_run_from_a_running_one(tmp_path):
    from gae.commands.status import live_holder, shown_status
    from gae.lock import is_held
    from gae.runstate import RunState

    dd = DataDir.resolve(tmp_path).ensure()
    st = RunState(run_name="live", run_id="live-1", config_hash="x")
    code = (
        f"from gae.lock import writer_lock\nwith writer_lock({str(dd.lock)!r}, what='rl-pipeline run live'):\n"
        "    print('held', flush=True)\n    import time; time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "held"
        assert is_held(dd.lock) and shown_status(st, live_holder(dd)) == "running"
        other = RunState(run_name="other", run_id="other-1", config_hash="x")
        assert shown_status(other, live_holder(dd)).startswith("interrupted")  # one writer at a time
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert not is_held(dd.lock)
    assert shown_status(st, live_holder(dd)) == f"interrupted (pid {proc.pid} not running)"
    assert (
        shown_status(RunState(run_name="f", run_id="f", config_hash="x", status="finished"), {}) == "finished"
    )


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"run_name": "a", "run_id": "unterminated', "is not valid JSON .* line 1 column"),
        ("[1, 2]", "holds a JSON list"),
        ('{"run_name": "a"}', "lacks config_hash, run_id"),
        ('{"run_name": "a", "run_id": "b", "config_hash": "c", "colour": 1}', "unknown fields colour"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_a_broken_run_state_names_its_file(tmp_path, text, match):
    from gae.runstate import RunState

    p = tmp_path / "a.state.json"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=rf"run state {p} .*{match}.*gae doctor --fix"):
        RunState.load(tmp_path, "a")


def test_config_refuses_sizes_a_gpt_run_would_fail_on():
    from gae.config import load_config

    with pytest.raises(ValueError, match=r"model.n_embd=64 is not divisible by model.n_head=3"):
        load_config(preset="smoke", overrides=["model.n_head=3"])
    with pytest.raises(
        ValueError, match=r"rollout.max_new_tokens=128 leaves no room .* model.block_size=128"
    ):
        load_config(preset="smoke", overrides=["rollout.max_new_tokens=128"])
    with pytest.raises(ValueError, match=r"eval.max_new_tokens=200 leaves no room"):
        load_config(preset="smoke", overrides=["eval.max_new_tokens=200"])
    # a GRU has no positions to run out of; the largest length that fits a GPT is allowed
    assert load_config(preset="smoke", overrides=["model.arch=gru", "rollout.max_new_tokens=128"])
    assert load_config(preset="smoke", overrides=["rollout.max_new_tokens=127"]).rollout.max_new_tokens == 127


def test_a_tiny_corpus_says_how_much_text_is_missing(tmp_path):
    from gae.models import ModelConfig
    from gae.pretrain import PretrainConfig, pretrain

    docs = [f"Document {i} is short." for i in range(5)]
    with pytest.raises(ValueError) as info:
        pretrain(docs, [], tokenizer_path=None, model_cfg=ModelConfig.preset("tiny"),
                 cfg=PretrainConfig.preset("tiny", vocab_size=300), out_dir=tmp_path)  # fmt: skip
    msg = str(info.value)
    assert msg.startswith("corpus too small: ") and "tokens in the eval stream, need at least 65" in msg
    need = int(msg.split("(about ")[1].split(" documents")[0])
    assert need > 5 and "the corpus has 5 train documents" in msg and "add text" in msg


# ------------------------------------------------------------------ MLflow: redone iterations, registration


def test_a_redone_iteration_does_not_log_a_metric_twice(tmp_path, empty_store):
    from gae.tracking import Tracker

    dd = DataDir.resolve(tmp_path).ensure()
    shutil.copyfile(empty_store, dd.mlflow_db)
    tr = Tracker.start(dd, run_id="r")
    tr.log_metrics({"a": 1.0, "b": 2.0}, step=0)
    tr.log_metrics({"a": 1.5, "b": 2.5}, step=1)  # killed after logging iteration 1, before completing it
    resumed = Tracker.start(dd, run_id="r", mlflow_run_id=tr.run_id)
    resumed.log_metrics({"a": 1.5, "b": 2.5, "c": 3.0}, step=1, only_new=True)  # iteration 1 again
    resumed.log_metrics({"a": 1.7, "b": 2.7, "c": 3.2}, step=2, only_new=True)
    for key, steps in (("a", [0, 1, 2]), ("b", [0, 1, 2]), ("c", [1, 2])):
        hist = tr.client.get_metric_history(tr.run_id, key)
        assert sorted(m.step for m in hist) == steps, (key, hist)  # one point per step
    # without only_new (a fresh run's path) a second call does add a point: the flag is what prevents it
    tr.log_metrics({"a": 9.0}, step=2)
    assert sorted(m.step for m in tr.client.get_metric_history(tr.run_id, "a")) == [0, 1, 2, 2]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    import torch

    from gae.models import ModelConfig, build_model, save_model
    from gae.tokenizer import train_tokenizer
    from tests.test_registry import TEXTS

    out = tmp_path_factory.mktemp("policy")
    train_tokenizer(TEXTS, vocab_size=300, out_dir=out)
    torch.manual_seed(0)
    save_model(build_model(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=64), 300), out)
    return out


@pytest.mark.parametrize("where", ["uploading the model", "registering the version"])
def test_an_interrupted_registration_leaves_no_orphan_model(
    tmp_path, empty_store, policy_dir, monkeypatch, where
):
    """A full disk while the model is uploaded (MLflow marks it FAILED) or after (READY, not
    registered): the retry registers one version and the run holds exactly one logged model."""
    import mlflow

    from gae.registry import log_and_register
    from gae.tracking import Tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    dd = DataDir.resolve(tmp_path / "data").ensure()
    shutil.copyfile(empty_store, dd.mlflow_db)
    tr = Tracker.start(dd, run_id="run-x")
    target = (
        (mlflow.MlflowClient, "log_model_artifacts")
        if where.startswith("upload")
        else (mlflow, "register_model")
    )
    real = getattr(*target)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(*target, full)
    with pytest.raises(DiskFull, match="no space left on device writing .*(mlartifacts|mlflow.db)"):
        log_and_register(policy_dir, eval_score=0.1, data_dir=dd, mlflow_run_id=tr.run_id, source="run-x:3")
    monkeypatch.setattr(*target, real)
    reg = log_and_register(policy_dir, eval_score=0.1, data_dir=dd, mlflow_run_id=tr.run_id, source="run-x:3")
    exp = tr.client.get_run(tr.run_id).info.experiment_id
    models = tr.client.search_logged_models(experiment_ids=[exp])
    assert len(models) == 1 and reg.version == 1
    mv = tr.client.get_model_version("gae-policy", "1")
    assert mv.source == models[0].model_uri or models[0].model_id in mv.source


def test_doctor_applies_pending_migrations(tmp_path, monkeypatch):
    """A database made by an older gaeflow (one schema file fewer) is reported and migrated."""
    import gae.db
    from gae import doctor

    older = tmp_path / "sql"
    shutil.copytree(gae.db.SQL_DIR, older)
    newest = sorted((older / "schema").glob("*.sql"))[-1]
    newest.unlink()
    dd = DataDir.resolve(tmp_path / "data").ensure()
    with monkeypatch.context() as m:
        m.setattr(gae.db, "SQL_DIR", older)
        gae.db.connect(dd, views=False).close()
    want = int(newest.name[:3])
    (mig,) = [f for f in doctor.check(dd).problems if f.check == "migrations"]
    assert (
        mig.problem == f"schema at version {want - 1}, this code expects {want}" and mig.severity == "error"
    )
    fixed = doctor.fix(dd)
    assert [f.fixed for f in fixed.problems] == ["migrations applied"] and fixed.quarantine is None
    assert not doctor.check(dd).problems


def test_a_full_disk_is_not_retried_other_io_errors_are(prefect_api, tmp_path):
    """A retried I/O task gives up at once on a full disk (space does not come back within a
    retry's delay; the user's one line should not wait), and still retries other failures."""
    from prefect import flow, task

    from tasks.pipeline import complete_iteration, publish_iteration
    from tasks.register import register_policy
    from tasks.retry import unless_disk_full
    from tasks.store import delete_iterations_after, fill_train_logprobs, store_iteration

    calls: list[str] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=unless_disk_full)
    def write(kind: str) -> None:
        calls.append(kind)
        if kind == "full":
            with writing(tmp_path / "x.bin"):
                raise OSError(errno.ENOSPC, "No space left on device")
        raise OSError(errno.EIO, "Input/output error")

    @flow
    def attempt(kind: str) -> None:
        write(kind)

    with pytest.raises(DiskFull):
        attempt("full")
    with pytest.raises(OSError, match="Input/output"):
        attempt("io")
    assert calls == ["full", "io", "io", "io"]
    for t in (register_policy, store_iteration, fill_train_logprobs, delete_iterations_after,
              publish_iteration, complete_iteration):  # fmt: skip
        assert t.retries == 2 and t.retry_condition_fn is unless_disk_full, t.name

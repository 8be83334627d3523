"""The writer lock (one writer per data directory) and the run state that resume reads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from gae.lock import DataDirLocked, read_holder, writer_lock
from gae.runstate import RunState, config_hash, start_or_resume

HOLD = """
import sys, time
from gae.lock import writer_lock
with writer_lock(sys.argv[1], what="rl-pipeline test-holder"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_second_writer_fails_fast_naming_the_holder_and_a_kill_releases(tmp_path):
    lock = tmp_path / ".writer.lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        with (
            pytest.raises(DataDirLocked, match=rf"in use by pid {proc.pid} .*rl-pipeline test-holder"),
            writer_lock(lock),
        ):
            pass
        assert time.perf_counter() - t0 < 1.0  # fails fast, does not wait
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        with writer_lock(lock, what="second") as holder:  # the kernel released the flock
            assert holder["pid"] == os.getpid()
            assert read_holder(lock)["what"] == "second"
        assert read_holder(lock) == {}
    finally:
        proc.kill()
        proc.wait()


def test_run_state_resumes_only_unfinished_runs_with_the_same_config(tmp_path):
    h = config_hash({"a": 1})
    st, resumed = start_or_resume(tmp_path, "demo", h)
    assert not resumed and st.last_completed_iteration == -1
    st.last_completed_iteration = 2
    st.save(tmp_path)
    again, resumed = start_or_resume(tmp_path, "demo", h)
    assert resumed and again.run_id == st.run_id and again.last_completed_iteration == 2
    other, resumed = start_or_resume(tmp_path, "demo", config_hash({"a": 2}))
    assert not resumed and other.run_id != st.run_id
    st.status = "finished"
    st.save(tmp_path)
    fresh, resumed = start_or_resume(tmp_path, "demo", h)
    assert not resumed and fresh.run_id != st.run_id
    assert RunState.load(tmp_path, "demo").status == "finished"
    assert config_hash({"b": 1, "a": 2}) == config_hash({"a": 2, "b": 1})


def test_resume_key_ignores_what_does_not_change_the_run():
    """A crashed run resumed on another device, with another rollout chunk size or with
    registration switched off is the same run; another learning rate or reward is not."""
    from gae.config import load_config
    from tasks.pipeline import resume_key

    def key(*sets):
        return config_hash(
            resume_key(load_config(preset="smoke", overrides=list(sets)).model_dump(mode="json"))
        )

    base = key()
    assert base == key("device=cpu") == key("rollout.batch_size=7") == key("registry.enabled=false")
    assert base == key("registry.model_name=other", "data_dir=/elsewhere", "resume=false")
    assert base != key("ppo.actor_lr=0.001")
    assert base != key("rollout.temperature=0.7")
    assert base != key("registry.experiment=other")  # the MLflow run lives in its experiment
    assert base != key("eval.n_prompts=3")  # the eval series must stay comparable

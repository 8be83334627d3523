"""gae.progress: log lines at most every interval (a fake clock, so no test waits), a bar on
a terminal, and the real callers: `gae ingest` and pretraining report through it."""

from __future__ import annotations

import subprocess
import sys

from gae.progress import Progress, ingest_progress, pretrain_progress


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_log_lines_at_most_every_interval_and_a_last_one():
    clock, lines = Clock(), []
    with Progress(
        "ingest", total=5, unit="files", tty=False, emit=lines.append, interval_s=10, clock=clock
    ) as p:
        on = ingest_progress(p)
        for t, done, nbytes in ((0, 0, 1e6), (3, 1, 2e6), (12, 2, 3e6), (13, 3, 4e6), (25, 4, 5e6)):
            clock.t = 100.0 + t
            on(files_done=done, files_total=5, bytes_read=int(nbytes))
        clock.t = 127.0
        p.update(completed=5)
    assert lines == [
        "ingest: 0/5 files (0%), 1.0 MB read, 0 s",
        "ingest: 2/5 files (40%), 3.0 MB read, 12 s",
        "ingest: 4/5 files (80%), 5.0 MB read, 25 s",
        "ingest: 5/5 files (100%), 5.0 MB read, 27 s (done)",
    ]


def test_no_last_line_after_a_failure_and_unknown_totals():
    lines = []
    try:
        with Progress("pretrain", unit="steps", tty=False, emit=lines.append, clock=Clock()) as p:
            pretrain_progress(p)(step=1, steps=150, loss=6.25)
            raise RuntimeError("stop")
    except RuntimeError:
        pass
    assert lines == ["pretrain: 1/150 steps (1%), loss 6.250, 0 s"]
    lines.clear()
    with Progress("read", unit="rows", tty=False, emit=lines.append, clock=Clock()) as p:
        p.update(advance=3)
        p.update(advance=2)
    assert lines == ["read: 3 rows, 0 s", "read: 5 rows, 0 s (done)"]


def test_a_terminal_gets_a_bar_and_no_lines():
    lines = []
    with Progress("pretrain", total=10, unit="steps", tty=True, emit=lines.append) as p:
        p.update(completed=4, info="loss 1.0")
        task = p._bar.tasks[0]
        assert (task.completed, task.total, task.fields["info"]) == (4, 10, "loss 1.0")
    assert lines == []


def test_gae_ingest_reports_files_and_bytes(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"d{i}.txt").write_text(f"Document {i}. " * 50)
    args = [sys.executable, "-m", "gae.cli", "ingest", str(corpus), "--data-dir", str(tmp_path / "d")]
    p = subprocess.run(args, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("ingest: 3/3 files (100%), 0.0 MB read")
    assert p.stderr.strip().endswith("(done)")
    assert "ingest:" not in p.stdout  # the summary on stdout, progress on stderr
    # --json is for scripts: the summary only, no progress lines
    p = subprocess.run([*args, "--json"], capture_output=True, text=True)
    assert p.returncode == 0 and "ingest:" not in p.stderr
    import json

    assert json.loads(p.stdout)["duplicates"] >= 3  # the same files again: nothing new


def test_pretraining_calls_progress_every_step():
    from gae.models import ModelConfig
    from gae.pretrain import PretrainConfig, pretrain

    calls = []
    texts = ["the cat sat on the mat. a dog ran in the park."] * 40
    cfg = PretrainConfig.preset("tiny").model_copy(
        update={"max_steps": 3, "vocab_size": 300, "eval_tokens": 64}
    )
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        res = pretrain(
            texts,
            texts[:4],
            tokenizer_path=None,
            model_cfg=ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32),
            cfg=cfg,
            out_dir=out,
            device="cpu",
            progress=lambda **kw: calls.append(kw),
        )
    assert [c["step"] for c in calls] == list(range(1, res.steps + 1))
    assert all(c["steps"] == 3 for c in calls) and calls[-1]["loss"] == res.final_train_loss


def test_the_pipeline_logs_pretraining_progress(smoke_run):
    """The smoke run's pretrain task logged its steps through the run logger (Prefect's logs)."""
    import asyncio

    import pytest

    if smoke_run["result"]["base"].get("cached"):
        pytest.skip("the smoke run reused a cached pretrained model: no steps to report")
    from prefect import get_client

    async def read():
        async with get_client() as client:
            return await client.read_logs()

    msgs = [log.message for log in asyncio.run(read())]
    steps, total = smoke_run["result"]["base"]["steps"], smoke_run["cfg"].pretrain.max_steps
    assert any(m.startswith(f"pretrain: 1/{total} steps") for m in msgs), msgs[:50]
    assert any(m.startswith(f"pretrain: {steps}/{total} steps") and m.endswith("(done)") for m in msgs)

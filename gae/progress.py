"""Progress of steps that take more than a few seconds: a rich progress bar when the output
is a terminal, plain log lines at most every `interval_s` seconds otherwise (Prefect's run
logs, CI, a pipe), so a log gets a handful of lines, not one per step.

    with Progress("ingest", total=n_files, unit="files") as p:
        for ...:
            p.update(completed=done, info=f"{mb:.1f} MB read")

A `Progress` is also a callback: library loops take an optional `progress` argument and
call it with their own keywords (`gae.ingest.ingest`: files_done, files_total, bytes_read;
`gae.pretrain.pretrain`: step, steps, loss); `ingest_progress` and `pretrain_progress`
adapt those calls to a bar. No loop needs to know how its progress is shown.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any


class Progress:
    """A bar on a terminal (`tty=None`: when stderr is one), else lines passed to `emit`
    (default: printed to stderr; a Prefect task passes its run logger's `info`) at most
    every `interval_s` seconds, and a last one when it closes."""

    def __init__(
        self,
        description: str,
        *,
        total: float | None = None,
        unit: str = "",
        tty: bool | None = None,
        emit: Callable[[str], None] | None = None,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.description = description
        self.total = total
        self.unit = unit
        self.completed = 0.0
        self.info = ""
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.emit = emit or _stderr
        self.interval_s = interval_s
        self.clock = clock
        self._t0 = clock()
        self._last_log: float | None = None
        self._closed = False
        self._bar = None
        self._task = None

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> Progress:
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(stderr=True),  # stdout stays for results (`gae ingest --json`)
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, info="")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc is not None)

    def close(self, *, failed: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif not failed:
            self.emit(self.line() + " (done)")

    # ---------------------------------------------------------------- updates

    def update(
        self,
        *,
        advance: float = 0.0,
        completed: float | None = None,
        total: float | None = None,
        info: str = "",
    ) -> None:
        if total is not None:
            self.total = total
        self.completed = completed if completed is not None else self.completed + advance
        if info:
            self.info = info
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, total=self.total, info=self.info)
            return
        now = self.clock()
        if self._last_log is None or now - self._last_log >= self.interval_s:
            self.emit(self.line())
            self._last_log = now

    def __call__(self, **kwargs: Any) -> None:
        self.update(**kwargs)

    def line(self) -> str:
        """The log line of the current state."""
        done = _num(self.completed)
        if self.total:
            pct = 100.0 * self.completed / self.total
            head = f"{self.description}: {done}/{_num(self.total)} {self.unit} ({pct:.0f}%)".replace(
                "  ", " "
            )
        else:
            head = f"{self.description}: {done} {self.unit}".rstrip()
        tail = f", {self.info}" if self.info else ""
        return f"{head}{tail}, {self.clock() - self._t0:.0f} s"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def ingest_progress(p: Progress) -> Callable[..., None]:
    """`gae.ingest.ingest`'s progress calls as updates of `p` (files on the bar, bytes as info)."""

    def on(*, files_done: int, files_total: int | None, bytes_read: int) -> None:
        p.update(completed=files_done, total=files_total, info=f"{bytes_read / 1e6:.1f} MB read")

    return on


def pretrain_progress(p: Progress) -> Callable[..., None]:
    """`gae.pretrain.pretrain`'s progress calls as updates of `p` (steps on the bar, loss as info)."""

    def on(*, step: int, steps: int, loss: float) -> None:
        p.update(completed=step, total=steps, info=f"loss {loss:.3f}")

    return on

"""Failures as one line a user can act on: what broke, which file, what to do.

The CLI (`gae.cli.main`) prints `user_message(exc)` instead of a traceback (`--debug` or
GAE_DEBUG=1 shows the trace). Write sites wrap themselves in `writing(path)`, so a full disk
is reported as the file being written and the one fix that works (free space, rerun: every
write is atomic and every run resumes), whichever library ran out of space: Python's own
OSError, torch's `[enforce fail at inline_container.cc]`, safetensors' and polars' `os error
28`, sqlite's `database or disk is full` (issue 12: a full disk showed none of that).

Stdlib only: `gae --help` must stay instant.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

RERUN = "free space and rerun the same command to resume"

# How libraries say "disk full" without an OSError: safetensors and polars (Rust: "os error
# 28", "StorageFull"), sqlite through SQLAlchemy/MLflow, DuckDB.
_DISK_FULL_TEXT = re.compile(
    r"No space left on device|os error 28|StorageFull|database or disk is full|Disk quota exceeded",
    re.IGNORECASE,
)
# torch.save's writer reports a short write without errno: `unexpected pos N vs M` or
# `PytorchStreamWriter failed writing file ...: file write failed`.
_TORCH_SHORT_WRITE = re.compile(r"inline_container\.cc|PytorchStreamWriter|file write failed")
# Below this much free space, a short write with no errno is taken for a full disk.
_LOW_SPACE = 64 << 20


class DiskFull(OSError):
    """No space left on the device while writing `filename`."""

    def __init__(self, path: str | os.PathLike, detail: str = ""):
        super().__init__(errno.ENOSPC, f"no space left on device writing {path}; {RERUN}", str(path))
        self.detail = detail

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):  # OSError pickles its args, which are not this __init__'s
        return (type(self), (self.filename, self.detail))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        with contextlib.suppress(OSError):
            if p.exists():
                return shutil.disk_usage(p).free
    return None


def as_disk_full(exc: BaseException, path: str | os.PathLike | None = None) -> OSError | None:
    """A DiskFull naming `path` (or the OSError's own file name) when `exc`, or an exception
    it was raised from, is a full disk; None otherwise."""
    for e in _chain(exc):
        if isinstance(e, DiskFull) or (_is_disk_full_errno(e) and _is_ours(e) and type(e) is not OSError):
            return e  # already one line of ours naming the file (e.g. gae.ingest's, with what was kept)
        full = _is_disk_full_errno(e)
        full = full or bool(_DISK_FULL_TEXT.search(str(e)))
        if not full and path is not None and _TORCH_SHORT_WRITE.search(str(e)):
            free = _free_bytes(Path(path))
            full = free is not None and free < _LOW_SPACE
        if full:
            where = path if path is not None else getattr(e, "filename", None)
            return DiskFull(where if where is not None else "the data directory", detail=str(e))
    return None


@contextlib.contextmanager
def writing(path: str | os.PathLike, *, temporary: str | os.PathLike | None = None) -> Iterator[None]:
    """Report a full disk inside the block as `DiskFull(path)`; anything else passes unchanged.

    temporary: where the block builds what becomes `path` (an atomic writer's temporary name);
    a DiskFull raised for a file in there is reported as `path`, the name the user knows.
    """
    try:
        yield
    except DiskFull as exc:
        if temporary is not None and Path(exc.filename).is_relative_to(temporary):
            raise DiskFull(path, exc.detail) from exc
        raise
    except Exception as exc:
        full = as_disk_full(exc, path)
        if full is None or full is exc:
            raise
        raise full from exc


# ---------------------------------------------------------------- one line for the CLI

_DUCKDB_CONTEXT = re.compile(r"\n\s*LINE \d+:.*", re.DOTALL)


def one_line(exc: BaseException) -> str:
    """A user-facing error as one line; pydantic's multi-line reports become `field: problem; ...`."""
    if _is_validation_error(exc):
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", ()))
            msg = str(e.get("msg", "")).removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" if loc else msg)
        return f"invalid {getattr(exc, 'title', 'config')}: " + "; ".join(" ".join(p.split()) for p in parts)
    text = str(exc)
    if type(exc).__module__.lstrip("_").startswith("duckdb"):
        text = _DUCKDB_CONTEXT.sub("", text)  # the caret diagram under the query
    return " ".join(text.split()) or type(exc).__name__


def user_message(exc: BaseException) -> str:
    """One line for any failure that reaches the CLI.

    Known kinds (bad input, missing or unreadable files, a full disk, a broken database or
    YAML file) say what to do; anything else is named as a bug with its type, and
    `--debug` shows the trace.
    """
    full = as_disk_full(exc)
    if full is not None:
        return str(full)
    if _is_validation_error(exc):
        return one_line(exc)
    if isinstance(exc, ValueError | RuntimeError | TypeError) and _is_ours(exc):
        return one_line(exc)
    if isinstance(exc, IsADirectoryError):
        return f"{exc.filename} is a folder; a file was expected there"
    if isinstance(exc, FileNotFoundError) and exc.filename and not str(exc).startswith("no "):
        return f"no such file or directory: {exc.filename}"
    if isinstance(exc, PermissionError) and exc.filename:
        return f"permission denied: {exc.filename} (check its owner and mode)"
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.strerror}: {exc.filename}"
    module = type(exc).__module__.lstrip("_").split(".")[0]
    if module in ("duckdb", "yaml", "pydantic", "pydantic_core", "polars", "pyarrow", "mlflow", "sqlalchemy"):
        return f"{module}: {one_line(exc)}"
    if isinstance(exc, ValueError | RuntimeError | OSError):
        return one_line(exc)
    return f"{type(exc).__name__}: {one_line(exc)} (unexpected: rerun with --debug for the traceback and report it)"


def _is_disk_full_errno(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _is_validation_error(exc: BaseException) -> bool:
    return type(exc).__name__ == "ValidationError" and callable(getattr(exc, "errors", None))


def _is_ours(exc: BaseException) -> bool:
    """Raised by gaeflow (or a plain builtin) rather than a library with its own wording."""
    return type(exc).__module__ == "builtins" or type(exc).__module__.startswith(("gae", "tasks", "flows"))


# ---------------------------------------------------------------- Prefect's console


class _NoTraceback:
    """A formatter that formats a record as `inner` would, without its traceback or stack."""

    def __init__(self, inner):
        self.inner = inner

    def format(self, record) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved

    def __getattr__(self, name):
        return getattr(self.inner, name)


def brief_console_tracebacks() -> None:
    """Keep tracebacks out of the terminal while a flow runs under the CLI.

    Prefect logs every failed task and flow with its traceback on the console (a full disk
    printed dozens); the CLI then prints one `error:` line for the failure, and `--debug`
    shows the trace. Only console handlers change: Prefect's API handler still sends the
    full traceback to the flow run's logs in the UI.
    """
    import logging

    loggers = [logging.getLogger()] + [
        lg for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for h in lg.handlers:
            is_console = isinstance(h, logging.StreamHandler) or type(h).__name__ == "PrefectConsoleHandler"
            if is_console and h.formatter is not None and not isinstance(h.formatter, _NoTraceback):
                h.setFormatter(_NoTraceback(h.formatter))

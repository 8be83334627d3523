"""One writer per data directory.

DuckDB allows one read-write process per file, and two pipeline runs writing the same
Parquet partitions and checkpoints would corrupt each other's iterations. A run takes an
exclusive `flock` on `<data-dir>/.writer.lock` for its whole duration and writes who holds
it into the file, so a second run fails fast with a message naming the holder. The kernel
releases a flock when its process dies, SIGKILL included: a crashed run never leaves a
stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from gae.errors import writing


class DataDirLocked(RuntimeError):
    """Another process holds the data directory's writer lock."""


def read_holder(lock_path: Path) -> dict:
    """Who took the lock last, as written into the file (`{}` when nobody or unreadable). The
    record outlives a killed holder: `is_held` says whether it still holds the lock."""
    try:
        holder = json.loads(Path(lock_path).read_text() or "{}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def is_held(lock_path: str | os.PathLike) -> bool:
    """Whether a live process holds the writer lock now.

    The kernel's answer, not the pid written in the file: a run killed with SIGKILL leaves
    its holder record behind (nobody truncated it) but its flock is gone, and a pid can be
    reused. Probed with a shared, non-blocking flock that is released at once.
    """
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def pid_alive(pid: object) -> bool | None:
    """Whether process `pid` exists on this host (None: not a pid)."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def describe_holder(holder: dict) -> str:
    if not holder:
        return "another process"
    parts = [f"pid {holder.get('pid')} on {holder.get('host')}"]
    if holder.get("what"):
        parts.append(str(holder["what"]))
    if holder.get("since"):
        parts.append(f"since {holder['since']}")
    return ", ".join(parts)


@contextlib.contextmanager
def writer_lock(
    lock_path: str | os.PathLike, *, what: str = "", hint: str = "use another --data-dir"
) -> Iterator[dict]:
    """Hold the exclusive writer lock for the duration of the block, or raise DataDirLocked.

    hint: what the message suggests besides waiting; a run started from the Prefect UI has
    no `--data-dir` to change, and says so in its own words."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(lock_path)
            raise DataDirLocked(
                f"data directory {lock_path.parent} is in use by {describe_holder(holder)}; "
                f"wait for that run to finish or {hint}"
            ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "what": what,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with writing(lock_path):  # a full disk fails here first: say so, naming the file
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield holder
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

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


class DataDirLocked(RuntimeError):
    """Another process holds the data directory's writer lock."""


def read_holder(lock_path: Path) -> dict:
    try:
        return json.loads(lock_path.read_text() or "{}")
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


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
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield holder
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

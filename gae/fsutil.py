"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Write under a temporary name in the same directory (same filesystem), fsync, then
`os.replace`, which is atomic on POSIX. A crash leaves at most a `.tmp-*` file that no
reader's glob matches (readers glob `*.parquet`, `*.json`, `*.safetensors`).

Permissions: `mkstemp` creates files 0600 and `mkdtemp` directories 0700, and the rename
keeps the mode, so the temporary is given what a plain `open()` / `mkdir` would create
(0666 / 0777 less the process umask: 0644 / 0755 under the usual 022) before the swap.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from gae.errors import writing

_UMASK_LOCK = threading.Lock()
_PROC_STATUS = "/proc/self/status"


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    `os.umask` can only be read by setting it, and a file another thread creates in that
    moment gets the wrong mode: Linux reports it in /proc/self/status ("Umask:", kernel
    4.7+); elsewhere the set-and-restore runs under a lock, which keeps this module's own
    callers out of that moment, and sets 022 meanwhile (never 0: no world-writable files).
    """
    try:
        with open(_PROC_STATUS, encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` atomically.

    A full disk, whichever library was writing, raises `gae.errors.DiskFull` naming `path`
    (checked before the temporary is removed: a short write without errno is told from other
    failures by the free space left)."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with writing(path):
            yield tmp_path
            # After the caller's write, so the mode holds however the caller wrote the file.
            os.chmod(tmp_path, 0o666 & ~current_umask())
            with open(tmp_path, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: object) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name, then swap it into place.

    The swap renames the old directory aside before renaming the new one in, so there
    is a brief moment with neither; readers that must never see that moment should
    glob files, which `atomic_path` covers.
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}.", dir=path.parent))
    try:
        with writing(path, temporary=tmp):
            yield tmp
            os.chmod(tmp, 0o777 & ~current_umask())
        old = None
        if path.exists():
            old = path.with_name(f".old-{path.name}.{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

"""Tensors handed from one task to the next in the same process without a trip through the host.

Tasks pass paths, never tensors (the file is what makes a stage resumable and inspectable).
On an accelerator, reading the file back would copy every (B, T) tensor to the device again
right after it was copied off it. So the writer also leaves its device tensors here, keyed by
the file, and a reader in the same process on the same device gets them back as long as the
file is still exactly the one written (same inode, size and modification time): a file
rewritten by another process, or a rerun, falls back to reading the file.

Only non-CPU devices use it (`enabled_for`): on the CPU the file read is the same memory
traffic as the cache, and handing the same tensor object to two stages would let an in-place
change in one leak into the other. Holds at most `MAX_ENTRIES` files, so device memory is
not kept for old iterations.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import torch

MAX_ENTRIES = 4  # an iteration writes two (the batch, the advantages): the last two iterations

_lock = threading.Lock()
_entries: OrderedDict[str, tuple[tuple[int, int, int], dict[str, torch.Tensor]]] = OrderedDict()


def enabled_for(device: torch.device | str) -> bool:
    return torch.device(device).type != "cpu"


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def put(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Remember `tensors` (still on their device) as the content of the file just written at `path`."""
    key = str(Path(path).resolve())
    stamp = _stamp(Path(key))
    if stamp is None:
        raise FileNotFoundError(f"handoff.put: {path} does not exist (write the file first)")
    with _lock:
        _entries[key] = (stamp, dict(tensors))
        _entries.move_to_end(key)
        while len(_entries) > MAX_ENTRIES:
            _entries.popitem(last=False)


def get(path: str | Path, device: torch.device | str) -> dict[str, torch.Tensor] | None:
    """The tensors written to `path` by this process if the file is unchanged and they live on
    `device`; None otherwise (read the file)."""
    key = str(Path(path).resolve())
    device = torch.device(device)
    with _lock:
        hit = _entries.get(key)
    if hit is None:
        return None
    stamp, tensors = hit
    if _stamp(Path(key)) != stamp:
        with _lock:
            _entries.pop(key, None)
        return None
    if any(not _same_device(t.device, device) for t in tensors.values()):
        return None
    return dict(tensors)


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    # "cuda" means the current device: compare indices only when both are explicit
    return a.index is None or b.index is None or a.index == b.index


def clear() -> None:
    with _lock:
        _entries.clear()

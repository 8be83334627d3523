"""Where models run: CUDA when present, Apple MPS next, CPU otherwise, with no code change.

`resolve_device("auto")` is the only place that decides; everything else takes a
`torch.device`. bf16 autocast is an opt-in for CUDA (`autocast(device, bf16=True)`); on
CPU it is a no-op because CPU bf16 matmuls are slower than fp32 on the machines we target.
"""

from __future__ import annotations

import contextlib

import torch

from gae import deferred


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn "auto" | "cpu" | "cuda" | "cuda:N" | "mps" (or a device) into a `torch.device`.

    "auto" picks CUDA, then MPS, then CPU. Naming an unavailable accelerator raises
    ValueError instead of failing later inside a kernel.
    """
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as e:
        raise ValueError(f"device {spec!r} is not a torch device (use auto, cpu, cuda, cuda:N, mps)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available on this machine")
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError(f"device {spec!r} requested but MPS is not available on this machine")
    return device


def autocast(device: torch.device, *, bf16: bool = False):
    """bf16 autocast on CUDA when asked for; a null context otherwise."""
    if bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_threads(n: int | str | None = "auto") -> int:
    """Set torch's intra-op threads for an entry point (CLI, flow, benchmark); never called on import.

    "auto": 1 thread on machines with at most 2 CPUs, torch's default elsewhere. On a 2-core
    machine shared with other processes, a second intra-op thread makes the small models here
    5-10x slower, not faster (every op waits at a barrier for the busy core; bench/RESULTS.md).
    None leaves torch's setting alone. Returns the thread count in effect.
    """
    import os

    if n == "auto":
        n = 1 if (os.cpu_count() or 1) <= 2 else None
    if n is not None:
        if int(n) < 1:
            raise ValueError(f"threads must be >= 1, got {n}")
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


# ------------------------------------------------------------------ host copies
#
# An iteration keeps its tensors on the device; the only thing that crosses to the host is
# what gets written (the rollout batch file, the advantages, the trainer's log-probs: the
# columns of the per-token store). Every such crossing goes through `to_host`, so it is
# done once, asynchronously into pinned memory, and it can be counted (`host_copy_log`).


class HostCopy:
    """Host copies of a dict of tensors, in flight. `wait()` returns them once they landed.

    On CUDA the copies go into pinned buffers with `non_blocking=True` on the current stream,
    followed by one event: the caller can queue more GPU work (e.g. the reference model's
    forward pass) before waiting, and the whole dict costs one synchronisation instead of
    one per tensor. On the CPU the "copies" are the tensors themselves (contiguous). The
    wait is also where deferred input checks are read (issue 14).
    """

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self._out: dict[str, torch.Tensor] = {}
        devices: list[torch.device] = []
        for name, t in tensors.items():
            t = t.detach()
            _record(name, t)
            if t.device.type == "cpu":
                self._out[name] = t.contiguous()
                continue
            cuda = t.device.type == "cuda"
            dst = torch.empty(t.shape, dtype=t.dtype, pin_memory=cuda)
            # non_blocking only into pinned memory on CUDA, where an event below orders it
            dst.copy_(t, non_blocking=cuda)
            self._out[name] = dst
            if cuda and t.device not in devices:
                devices.append(t.device)
        # one event per source device, after the last copy on that device's current stream (the
        # stream the copy ran on, whichever device is current here)
        self._events = []
        for dev in devices:
            ev = torch.cuda.Event()
            ev.record(torch.cuda.current_stream(dev))
            self._events.append(ev)

    def wait(self) -> dict[str, torch.Tensor]:
        """The host copies, once they landed. Raises the first failed deferred input check of
        this thread's earlier `compute_gae` calls (gae/deferred.py): this is the wait they were
        deferred to, so bad results never reach the file these copies are written to."""
        for ev in self._events:
            ev.synchronize()
        self._events = []
        deferred.raise_pending()
        return dict(self._out)


def to_host(tensors: dict[str, torch.Tensor]) -> HostCopy:
    """Start copying named tensors to the host; `.wait()` on the result gives the copies."""
    return HostCopy(tensors)


_LEDGERS: list[list[dict]] = []


def _record(name: str, t: torch.Tensor) -> None:
    for ledger in _LEDGERS:
        ledger.append(
            {
                "name": name,
                "shape": tuple(t.shape),
                "dtype": str(t.dtype).removeprefix("torch."),
                "bytes": t.numel() * t.element_size(),
                "device": t.device.type,
            }
        )


@contextlib.contextmanager
def host_copy_log():
    """Record every tensor handed to `to_host` inside the block (name, shape, dtype, bytes,
    source device), also on the CPU where nothing is copied: the accounting the GPU's
    profiler confirms (bench/gpu.py counts the real device-to-host copies)."""
    ledger: list[dict] = []
    _LEDGERS.append(ledger)
    try:
        yield ledger
    finally:
        # by identity: two logs with equal contents are still different logs
        del _LEDGERS[next(i for i, x in enumerate(_LEDGERS) if x is ledger)]

"""Where models run: CUDA when present, Apple MPS next, CPU otherwise, with no code change.

`resolve_device("auto")` is the only place that decides; everything else takes a
`torch.device`. bf16 autocast is an opt-in for CUDA (`autocast(device, bf16=True)`); on
CPU it is a no-op because CPU bf16 matmuls are slower than fp32 on the machines we target.
"""

from __future__ import annotations

import contextlib

import torch


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

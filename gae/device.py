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

"""Masked reductions over action tokens.

Every per-token tensor is `(B, T)`; `mask` is True on action tokens. Statistics
are taken over the action tokens of the whole batch, never over padding or
observation tokens (advantages-spec.md, "Whitening").
"""

from __future__ import annotations

import torch

WHITEN_EPS = 1e-8


def _check(x: torch.Tensor, mask: torch.Tensor, name: str = "x") -> torch.Tensor:
    if x.shape != mask.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)} but mask has shape {tuple(mask.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return mask if mask.dtype == torch.bool else mask != 0


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `x` over positions where `mask` is True (garbage elsewhere is ignored, NaN included)."""
    m = _check(x, mask)
    z = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return z.sum() if dim is None else z.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over action tokens; a row (or batch) with no action token gives 0, not NaN."""
    m = _check(x, mask)
    n = m.sum() if dim is None else m.sum(dim)
    return masked_sum(x, m, dim) / n.clamp(min=1).to(x.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over all action tokens of the batch (unbiased by default, as the spec asks).

    Raises ValueError when fewer than 2 action tokens exist (unbiased) or none (biased):
    a variance from nothing is undefined and a silent NaN would poison training.
    """
    m = _check(x, mask)
    n = int(m.sum())
    need = 2 if unbiased else 1
    if n < need:
        raise ValueError(f"masked_var needs at least {need} action tokens, the mask has {n}")
    # Two-pass in float64 at least: the naive sum-of-squares formula cancels badly in float32.
    acc = torch.float64 if x.dtype != torch.float64 and x.device.type != "mps" else x.dtype
    xm = x.to(acc)
    mean = masked_sum(xm, m) / n
    centered = torch.where(m, xm - mean, torch.zeros((), dtype=acc, device=x.device))
    var = (centered * centered).sum() / (n - 1 if unbiased else n)
    return var.to(x.dtype)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """`(x - mean) * rsqrt(var + 1e-8)` over action tokens of the batch; exactly 0 elsewhere.

    `shift_mean=False` keeps the mean (scales only), as some PPO variants do.
    Fewer than 2 action tokens: ValueError (see `masked_var`).
    On CPU this dispatches to a compiled two-pass kernel that reads the data twice and
    writes once, which costs less than the GAE pass itself.
    """
    m = _check(x, mask)
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        from gae.kernels.cpu import whiten_cpu

        return whiten_cpu(x, m, shift_mean=shift_mean, eps=WHITEN_EPS)
    return masked_whiten_torch(x, m, shift_mean=shift_mean)


def masked_whiten_torch(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """The plain PyTorch whitening; the reference for the compiled CPU path."""
    m = _check(x, mask)
    var = masked_var(x, m, unbiased=True)
    mean = masked_mean(x, m)
    centered = x - mean
    out = centered * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, torch.zeros((), dtype=x.dtype, device=x.device))

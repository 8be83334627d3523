"""numba kernels: GAE and whitening in one pass over the bytes, on CPU.

GAE is a serial recurrence along T, so the kernel walks each row backwards once,
reading rewards, values and mask and writing advantages and returns (20 bytes a
token in float32). The input checks the public API promises (non-finite numbers at
action positions, stray rewards at non-action positions) ride along in the same
pass: separate torch passes for them cost several times the GAE itself.

Single-threaded on purpose: torch's and numba's thread pools fight on a 2-core
machine (stack-notes.md), and one core already runs near memory bandwidth.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

# Error codes returned by the kernel; gae.advantages turns them into messages.
OK = 0
BAD_REWARD = 1  # rewards[b, t] not finite at an action position
BAD_VALUE = 2  # values[b, t] not finite at an action position
STRAY_REWARD = 3  # rewards[b, t] != 0 at a non-action position
BAD_LAST_VALUE = 4  # last_value[b] not finite


@njit(cache=True, nogil=True, fastmath={"contract"})
def _gae_kernel(r, v, m, last_v, gamma, lam, adv, ret):  # pragma: no cover - compiled
    """Returns the first row with a bad input (or -1). The hot loop only folds a flag;
    the wrapper locates the exact position in that row, off the hot path."""
    B, T = r.shape
    # Compute in the input dtype: float64 temporaries would add conversions to the
    # serial dependency chain A_k -> A_{k-1}, which is what bounds this loop.
    g = r.dtype.type(gamma)
    gl = r.dtype.type(gamma * lam)
    zero = r.dtype.type(0)
    for b in range(B):
        next_v = last_v[b]
        a_next = zero
        bad = not np.isfinite(next_v)
        for t in range(T - 1, -1, -1):
            rt = r[b, t]
            if m[b, t]:
                vt = v[b, t]
                bad |= not (np.isfinite(rt) and np.isfinite(vt))
                # delta_k = r_k + gamma V_{k+1} - V_k ; A_k = delta_k + gamma lam A_{k+1}
                a = rt + g * next_v - vt + gl * a_next
                adv[b, t] = a
                ret[b, t] = a + vt
                a_next = a
                next_v = vt
            else:
                bad |= rt != zero
                adv[b, t] = zero
                ret[b, t] = zero
        if bad:
            return b
    return -1


@njit(cache=True, nogil=True)
def _masked_moments(x, m):  # pragma: no cover - compiled
    """Count, mean and unbiased variance over masked entries; shifted sums in float64."""
    B, T = x.shape
    n = 0
    shift = 0.0
    s = 0.0
    ss = 0.0
    found = False
    for b in range(B):
        for t in range(T):
            if m[b, t]:
                xv = np.float64(x[b, t])
                if not found:
                    shift = xv
                    found = True
                d = xv - shift
                s += d
                ss += d * d
                n += 1
    if n < 2:
        return n, 0.0, 0.0
    mean_d = s / n
    var = (ss - n * mean_d * mean_d) / (n - 1)
    if var < 0.0:
        var = 0.0
    return n, shift + mean_d, var


@njit(cache=True, nogil=True)
def _whiten_kernel(x, m, mean, scale, shift_mean, out):  # pragma: no cover - compiled
    B, T = x.shape
    zero = out.dtype.type(0)
    sub = mean if shift_mean else 0.0
    for b in range(B):
        for t in range(T):
            if m[b, t]:
                out[b, t] = (x[b, t] - mean) * scale + (mean - sub)
            else:
                out[b, t] = zero


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


def gae_cpu(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    last_value: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int]]:
    """Run the kernel. Inputs are CPU tensors of one float dtype (float32 or float64),
    `mask` bool, `last_value` shaped (B,). Returns (advantages, returns, (code, b, t))."""
    B, T = rewards.shape
    adv = torch.empty((B, T), dtype=rewards.dtype)
    ret = torch.empty((B, T), dtype=rewards.dtype)
    r, v, m, lv = _np(rewards), _np(values), _np(mask), _np(last_value)
    b = int(_gae_kernel(r, v, m, lv, float(gamma), float(lam), adv.numpy(), ret.numpy()))
    if b < 0:
        return adv, ret, (OK, -1, -1)
    return adv, ret, _locate(r[b], v[b], m[b], lv[b], b)


def _locate(r: np.ndarray, v: np.ndarray, m: np.ndarray, lv: float, b: int) -> tuple[int, int, int]:
    """The first bad position of row b, with the same precedence as the torch check."""
    if not np.isfinite(lv):
        return BAD_LAST_VALUE, b, -1
    codes = np.zeros(r.shape, np.int8)
    codes[~m & (r != 0)] = STRAY_REWARD
    codes[m & ~np.isfinite(v)] = BAD_VALUE
    codes[m & ~np.isfinite(r)] = BAD_REWARD
    t = int(np.flatnonzero(codes)[0])
    return int(codes[t]), b, t


def whiten_cpu(x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool, eps: float) -> torch.Tensor:
    """Two passes: moments (read x and mask), then the scaled write."""
    xn, mn = _np(x), _np(mask)
    n, mean, var = _masked_moments(xn, mn)
    if n < 2:
        raise ValueError(f"masked_whiten needs at least 2 action tokens, the mask has {n}")
    out = torch.empty(x.shape, dtype=x.dtype)
    _whiten_kernel(xn, mn, mean, 1.0 / np.sqrt(var + eps), shift_mean, out.numpy())
    return out

"""numba kernels: GAE and whitening in one pass over the bytes, on CPU.

GAE is a serial recurrence along T, so the kernel walks each row backwards once,
reading rewards, values and mask and writing advantages and returns (17 bytes a
token in float32 with a bool mask). The input checks the public API promises (non-finite numbers at
action positions, stray rewards at non-action positions) ride along in the same
pass: separate torch passes for them cost several times the GAE itself.

Single-threaded on purpose: torch's and numba's thread pools fight on a 2-core
machine (stack-notes.md), and one core already runs near memory bandwidth.

Measured on the 2-core development machine (1024 x 2048 float32, best of interleaved
runs): the kernel went from ~2.5 to ~1.3 ns a token by (1) unsigned loop indices (numba
emitted a negative-index wraparound per access of a count-down loop), (2) folding the
input checks into one float per row instead of boolean logic per token, and (3) two
independent rows per iteration. Whitening's moments went from one serial float64 add
chain to per-row SIMD sums, and large outputs come from a buffer pool (see below).
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch
from numba import njit

# Error codes returned by the kernel; gae.advantages turns them into messages.
OK = 0
BAD_REWARD = 1  # rewards[b, t] not finite at an action position
BAD_VALUE = 2  # values[b, t] not finite at an action position
STRAY_REWARD = 3  # rewards[b, t] != 0 at a non-action position
BAD_LAST_VALUE = 4  # last_value[b] not finite


# Hot-loop compile options. boundscheck is off (the wrapper guarantees the shapes);
# error_model="numpy" drops the Python-exception checks around float division. The
# fastmath flags are per kernel and never include nnan/ninf: `x - x` must stay a NaN
# detector and garbage at padding positions must never be assumed away.
_HOT = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy")


@njit(inline="always", nogil=True, boundscheck=False, error_model="numpy", fastmath={"contract"})
def _gae_step(r, v, m, adv, ret, t, g, gl, zero, next_v, a_next, chk):  # pragma: no cover - compiled
    """One position t of one row (1-D views), going backwards.

    `chk` folds the input checks into a float that stays exactly 0 on good input:
    `x - x` is 0 for finite x and NaN for NaN or inf, and |r| > 0 for a stray reward.
    A float add is shorter than the A_k -> A_{k-1} chain, so the check rides along
    for free instead of costing a second pass (or a branch per check)."""
    rt = r[t]
    if m[t]:
        vt = v[t]
        # delta_k = r_k + gamma V_{k+1} - V_k ; A_k = delta_k + gamma lam A_{k+1}
        a = rt + g * next_v - vt + gl * a_next
        adv[t] = a
        ret[t] = a + vt
        chk += (rt - rt) + (vt - vt)
        return vt, a, chk
    adv[t] = zero
    ret[t] = zero
    chk += abs(rt)
    return next_v, a_next, chk


@njit(fastmath={"contract"}, **_HOT)
def _gae_kernel(r, v, m, last_v, gamma, lam, adv, ret):  # pragma: no cover - compiled
    """Returns the first row with a bad input (or -1). The hot loop only folds a check
    value per row; the wrapper locates the exact position in that row, off the hot path.

    Two rows per iteration: each row is a serial chain (one FMA latency a token), and a
    second independent chain fills the idle issue slots (measured ~1.3x on this machine;
    four rows spilled registers and ran slower). Both rows go through the same
    `_gae_step`, so every output is computed by the same float operations whatever its
    row's position or the batch size."""
    B, T = r.shape
    # Compute in the input dtype: float64 temporaries would add conversions to the
    # serial dependency chain A_k -> A_{k-1}, which is what bounds this loop.
    g = r.dtype.type(gamma)
    gl = r.dtype.type(gamma * lam)
    zero = r.dtype.type(0)
    b = 0
    while b + 1 < B:
        r0, v0, m0, adv0, ret0 = r[b], v[b], m[b], adv[b], ret[b]
        r1, v1, m1, adv1, ret1 = r[b + 1], v[b + 1], m[b + 1], adv[b + 1], ret[b + 1]
        nv0, nv1 = last_v[b], last_v[b + 1]
        a0 = a1 = zero
        chk0, chk1 = nv0 - nv0, nv1 - nv1  # NaN for a non-finite last_value
        for i in range(T):
            # Unsigned index counting down: a signed one makes numba emit a
            # negative-index wraparound per access, in the hot loop.
            t = np.uintp(T - 1 - i)
            nv0, a0, chk0 = _gae_step(r0, v0, m0, adv0, ret0, t, g, gl, zero, nv0, a0, chk0)
            nv1, a1, chk1 = _gae_step(r1, v1, m1, adv1, ret1, t, g, gl, zero, nv1, a1, chk1)
        if chk0 != zero:  # also true for NaN
            return b
        if chk1 != zero:
            return b + 1
        b += 2
    if b < B:  # odd B: the last row alone
        rb, vb, mb, advb, retb = r[b], v[b], m[b], adv[b], ret[b]
        nv = last_v[b]
        a = zero
        chk = nv - nv
        for i in range(T):
            t = np.uintp(T - 1 - i)
            nv, a, chk = _gae_step(rb, vb, mb, advb, retb, t, g, gl, zero, nv, a, chk)
        if chk != zero:
            return b
    return -1


@njit(inline="always", nogil=True, boundscheck=False, error_model="numpy", fastmath={"contract"})
def _gae2_step(r, v, m, adv, ret, t, g, gla, glc, zero, next_v, a_next, c_next, chk):  # pragma: no cover
    """`_gae_step` with a second accumulator: the same delta feeds the actor's recursion (gla =
    gamma * lam_actor) and the critic's (glc = gamma * lam_critic); returns = A_critic + V.
    The actor's chain is the same float expression as `_gae_step`'s, so equal lambdas give
    bit-identical outputs."""
    rt = r[t]
    if m[t]:
        vt = v[t]
        delta = rt + g * next_v - vt
        a = delta + gla * a_next
        c = delta + glc * c_next
        adv[t] = a
        ret[t] = c + vt
        chk += (rt - rt) + (vt - vt)
        return vt, a, c, chk
    adv[t] = zero
    ret[t] = zero
    chk += abs(rt)
    return next_v, a_next, c_next, chk


@njit(fastmath={"contract"}, **_HOT)
def _gae_rows_kernel(r, v, m, last_v, gamma, gl_a, gl_c, adv, ret):  # pragma: no cover - compiled
    """Per-row, decoupled GAE: `gl_a[b]` = gamma * lam_actor[b], `gl_c[b]` = gamma * lam_critic[b]
    (B,) arrays in the inputs' dtype. Two rows per iteration as in `_gae_kernel`: four
    independent chains (two accumulators of two rows) in flight. Returns the first bad row or -1."""
    B, T = r.shape
    g = r.dtype.type(gamma)
    zero = r.dtype.type(0)
    b = 0
    while b + 1 < B:
        r0, v0, m0, adv0, ret0 = r[b], v[b], m[b], adv[b], ret[b]
        r1, v1, m1, adv1, ret1 = r[b + 1], v[b + 1], m[b + 1], adv[b + 1], ret[b + 1]
        la0, lc0, la1, lc1 = gl_a[b], gl_c[b], gl_a[b + 1], gl_c[b + 1]
        nv0, nv1 = last_v[b], last_v[b + 1]
        a0 = a1 = c0 = c1 = zero
        chk0, chk1 = nv0 - nv0, nv1 - nv1
        for i in range(T):
            t = np.uintp(T - 1 - i)
            nv0, a0, c0, chk0 = _gae2_step(r0, v0, m0, adv0, ret0, t, g, la0, lc0, zero, nv0, a0, c0, chk0)
            nv1, a1, c1, chk1 = _gae2_step(r1, v1, m1, adv1, ret1, t, g, la1, lc1, zero, nv1, a1, c1, chk1)
        if chk0 != zero:
            return b
        if chk1 != zero:
            return b + 1
        b += 2
    if b < B:
        rb, vb, mb, advb, retb = r[b], v[b], m[b], adv[b], ret[b]
        la, lc = gl_a[b], gl_c[b]
        nv = last_v[b]
        a = c = zero
        chk = nv - nv
        for i in range(T):
            t = np.uintp(T - 1 - i)
            nv, a, c, chk = _gae2_step(rb, vb, mb, advb, retb, t, g, la, lc, zero, nv, a, c, chk)
        if chk != zero:
            return b
    return -1


@njit(fastmath={"reassoc", "contract"}, **_HOT)
def _masked_sums(x, m, shift):  # pragma: no cover - compiled
    """Sum and sum of squares of (x - shift) over masked entries, in float64.

    "reassoc" lets LLVM split each row's sums over SIMD lanes (a serial float64 add
    chain was the whole cost); masked-out lanes add an exact 0 chosen by a select, so
    garbage (NaN, inf) at padding positions never reaches a sum. Sums are per row, then
    over rows: shorter chains, smaller rounding error than one running sum. The count
    is not taken here: a third (integer) accumulator cost more than the two sums."""
    B, T = x.shape
    s = 0.0
    ss = 0.0
    for b in range(B):
        xb, mb = x[b], m[b]
        sb = 0.0
        ssb = 0.0
        for t in range(T):
            d = np.float64(xb[t]) - shift
            d = d if mb[t] else 0.0
            sb += d
            ssb += d * d
        s += sb
        ss += ssb
    return s, ss


def _masked_moments(x: np.ndarray, m: np.ndarray) -> tuple[int, float, float]:
    """Count, mean and unbiased variance over masked entries (C-contiguous arrays)."""
    n = int(np.count_nonzero(m))
    if n < 2:
        return n, 0.0, 0.0
    # Shift by the first action value: the sum of squares then cancels less.
    shift = float(x.reshape(-1)[int(np.argmax(m.reshape(-1)))])
    s, ss = _masked_sums(x, m, shift)
    mean_d = s / n
    var = max((ss - n * mean_d * mean_d) / (n - 1), 0.0)
    return n, shift + mean_d, var


@njit(**_HOT)
def _whiten_kernel(x, m, mean, scale, shift_mean, out):  # pragma: no cover - compiled
    """One read of x and mask, one write; a select (not a branch) so the loop vectorises."""
    B, T = x.shape
    zero = out.dtype.type(0)
    sub = mean if shift_mean else 0.0
    for b in range(B):
        xb, mb, ob = x[b], m[b], out[b]
        for t in range(T):
            y = (xb[t] - mean) * scale + (mean - sub)
            ob[t] = y if mb[t] else zero


# --------------------------------------------------------------------------- output buffers
# Fresh outputs are the other half of the cost: on the 2-core development VM, first
# touching fresh pages (a fault per 4 KiB) cost up to 5x the kernel (16 MiB of outputs at
# 1024 x 2048: 4-23 ms against a ~4 ms kernel), and whether glibc hands back warm pages
# or fresh ones depends on every other allocation of the process. So large outputs come
# from a small pool of buffers that go back to it when the last tensor (or view) using
# them dies, as torch's CUDA caching allocator does; bounded in count and bytes.

_POOL_MIN_BYTES = 1 << 20  # below this, malloc keeps warm pages anyway
_POOL_MAX_BUFFERS = 8
_POOL_MAX_BYTES = 1 << 30  # idle bytes kept at most
_NP_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
_free: list[np.ndarray] = []  # idle raw buffers (uint8), the most recently returned last
# Reentrant: a buffer can come back (a __del__) while this thread holds the lock.
_lock = threading.RLock()


class _Lease:
    """Owns one raw buffer while any array or tensor made from it is alive: numpy keeps
    the object exposing `__array_interface__` as the array's base, `torch.from_numpy`
    keeps the array, and views keep the storage, so this dies with the last of them."""

    __slots__ = ("raw", "__array_interface__")

    def __init__(self, raw: np.ndarray, shape: tuple[int, ...], dtype: np.dtype):
        self.raw = raw
        self.__array_interface__ = {
            "shape": shape,
            "typestr": dtype.str,
            "data": (raw.ctypes.data, False),  # False: writable
            "version": 3,
        }

    def __del__(self):
        # Not contextlib.suppress: at interpreter shutdown that module may be gone already.
        try:  # noqa: SIM105
            _give_back(self.raw)
        except Exception:  # shutdown: this module's globals may be torn down
            pass


def _give_back(raw: np.ndarray) -> None:
    with _lock:
        _free.append(raw)
        while len(_free) > _POOL_MAX_BUFFERS or sum(f.nbytes for f in _free) > _POOL_MAX_BYTES:
            _free.pop(0)  # the oldest goes back to malloc


def empty_output(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor, from the pool when it is large. Callers
    write every element (the kernels do), so a reused buffer never leaks old values."""
    npd = _NP_DTYPES.get(dtype)
    nbytes = math.prod(shape) * (npd.itemsize if npd is not None else 0)
    if npd is None or nbytes < _POOL_MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    raw = None
    with _lock:
        for i in range(len(_free) - 1, -1, -1):  # warmest first; a somewhat bigger one serves too
            if nbytes <= _free[i].nbytes <= 2 * nbytes:
                raw = _free.pop(i)
                break
    if raw is None:
        raw = np.empty(nbytes, np.uint8)
    return torch.from_numpy(np.asarray(_Lease(raw, tuple(shape), npd)))


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


def _check_out(name: str, o: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(o, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(o).__name__}")
    if o.shape != like.shape or o.dtype != like.dtype or o.device.type != "cpu":
        raise ValueError(
            f"{name} must be a CPU tensor of shape {tuple(like.shape)} and dtype {like.dtype}, "
            f"got {o.device.type} {tuple(o.shape)} {o.dtype}"
        )
    if not o.is_contiguous():
        raise ValueError(f"{name} must be contiguous (the kernel writes it in place)")
    return o


def _gl(gamma: float, lam, B: int, dtype: np.dtype) -> np.ndarray:
    """gamma * lam per row, multiplied in float64 and rounded once to the compute dtype (what
    `r.dtype.type(gamma * lam)` does for a Python float lambda)."""
    lam64 = lam.detach().double().cpu().numpy() if isinstance(lam, torch.Tensor) else np.full(B, float(lam))
    return np.ascontiguousarray((float(gamma) * lam64).astype(dtype))


def gae_cpu(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    last_value: torch.Tensor,
    gamma: float,
    lam: float | torch.Tensor,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    lam_critic: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int]]:
    """Run the kernel. Inputs are CPU tensors of one float dtype (float32 or float64),
    `mask` bool, `last_value` shaped (B,). Returns (advantages, returns, (code, b, t)).

    `lam` is a float or a (B,) tensor of per-row lambdas; `lam_critic` (float or (B,)) the
    lambda of the returns, None for `lam`. A float `lam` without `lam_critic` runs the
    single-accumulator `_gae_kernel`; anything else `_gae_rows_kernel` (two accumulators,
    one pass). Lambdas are taken as valid ([0, 1]; `gae.advantages` checks them).

    `out=(advantages, returns)`: contiguous tensors of the inputs' shape and dtype to
    write into instead of fresh ones (a training loop that keeps its buffers skips the
    page faults of first touching fresh memory). They must not alias the inputs."""
    B, T = rewards.shape
    if out is None:
        adv = empty_output((B, T), rewards.dtype)
        ret = empty_output((B, T), rewards.dtype)
    else:
        adv, ret = (_check_out(n, o, rewards) for n, o in zip(("out[0]", "out[1]"), out, strict=True))
    r, v, m, lv = _np(rewards), _np(values), _np(mask), _np(last_value)
    if lam_critic is None and not isinstance(lam, torch.Tensor):
        b = int(_gae_kernel(r, v, m, lv, float(gamma), float(lam), adv.numpy(), ret.numpy()))
    else:
        gl_a = _gl(gamma, lam, B, r.dtype)
        gl_c = gl_a if lam_critic is None else _gl(gamma, lam_critic, B, r.dtype)
        b = int(_gae_rows_kernel(r, v, m, lv, float(gamma), gl_a, gl_c, adv.numpy(), ret.numpy()))
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
    out = empty_output(tuple(x.shape), x.dtype)
    _whiten_kernel(xn, mn, mean, 1.0 / np.sqrt(var + eps), shift_mean, out.numpy())
    return out

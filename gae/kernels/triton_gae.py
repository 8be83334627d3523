"""Triton GAE for CUDA: one program per row, a reverse associative scan per chunk, the input
checks in the same pass and their verdict left on the device.

Over a row, GAE with a non-contiguous mask is a first-order recurrence on the advantage at
the nearest action position >= t:

    action t:      A_t = gamma*lam*A_{t+1} + delta_t,   delta_t = r_t + gamma*V_next(t) - v_t
    non-action t:  A_t = A_{t+1}                        (no step, no discount)

where V_next(t) is the value at the next action position after t (`last_value` past the
last). Each position is the affine map A -> p*A + c, and maps compose associatively, so
`tl.associative_scan(reverse=True)` evaluates a chunk of BLOCK positions in O(log BLOCK)
depth (Blelloch 1990, "Prefix sums and their applications"); the state at a chunk's first
position carries into the chunk before it. One launch reads each byte once, where a loop
over T launches T kernels.

Two scans of the same recurrence (the launch's `scan`, constant GATHER):

- "gather" (the default): a min-scan of the mask read one position on gives each action
  position the next one; V_next is read back from the row just loaded (an L1/L2 hit, not a
  second trip to DRAM), delta is elementwise, and the affine scan carries two fields, (p, c).
- "affine": the state is the pair (A_t, V_t), V_t the value at the nearest action >= t; a
  position is y -> P y + c with P = [[p, q], [0, s]] (action: p = gamma*lam, q = gamma,
  s = 0, offsets (r - v, v); non-action: identity): one scan of five fields, no gather.

Both give the reference's numbers to float rounding (the tests hold them to 1e-10 in
float64). Compiled for sm_90, "gather" takes fewer registers (63 against 71 at BLOCK 512;
`bench/gae_sass.py`); which is faster is for `bench/gpu.py` to measure on the GPU
(`GAE_TRITON_CONFIG`, below, picks one for a run).

Per-row and decoupled lambda: lambda may be one number or one per row (a float64 (B,)
tensor), and the returns may use their own lambda (VC-PPO, arXiv 2503.01491). With a critic
lambda of its own the scan carries a second (p, c) pair (advantages from lam_a, returns
from A(lam_c) + v), in the same pass; its float operations are those of the first pair, so
equal lambdas give bit-identical outputs.

Checks without a host sync (issue 14). The checks of the public API (a non-finite reward or
value at an action position, a non-zero reward off the mask, a non-finite `last_value`, a
per-row lambda outside [0, 1]) ride in the hot loop as one float per lane that stays
exactly 0 on good input (`x - x` is 0 for finite x and NaN otherwise; |r| > 0 for a stray
reward), as the numba kernel folds them. A row whose float is not 0 is scanned once more,
off the hot path, for its first bad position. Each program writes one record for its row,
`(key, value)` int64 (the value's float64 bits), `key` ordering the problems as the eager
check reports them:

    key = b                          lam[b] outside [0, 1]
        = B + b                      lam_critic[b] outside [0, 1]
        = 2B + b*S                   last_value[b] not finite                   S = 4T + 4
        = 2B + b*S + 4(t+1) + k      k = 0: rewards[b, t] not finite at an action position,
                                     1: values[b, t] not finite there, 2: rewards[b, t] != 0 off it
        = NO_ERROR                   the row is clean

so the smallest key over rows is the first problem in the eager check's order (lambdas
first, then rows in order, a row's `last_value` before its positions, a position's reward
before its value), with no atomics and no initialised buffer: deterministic whatever the
order programs run in. `gae.advantages` reduces the records on the device and reads them
when the host next waits (`gae.deferred`), or at once with `check="eager"`.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import torch
import triton
import triton.language as tl

NO_ERROR = 2**63 - 1  # the key of a clean row
_IDX_NONE = tl.constexpr(2**31 - 1)  # "no action position" in the integer scan


@triton.jit
def _affine(p1, c1, p2, c2):
    # Reverse scan: (1) the composed map of the later positions, (2) an earlier position's
    # map; the result is earlier ∘ later:  A -> p2 (p1 A + c1) + c2.
    return p2 * p1, p2 * c1 + c2


@triton.jit
def _affine2(pa1, pc1, ca1, cc1, pa2, pc2, ca2, cc2):
    # `_affine` for the actor's and the critic's accumulators side by side.
    return pa2 * pa1, pc2 * pc1, pa2 * ca1 + ca2, pc2 * cc1 + cc2


@triton.jit
def _affine_av(p1, q1, s1, c1, d1, p2, q2, s2, c2, d2):
    # `_affine` on the pair (A, V): [[p, q], [0, s]] and offsets (c, d); earlier (2) ∘ later (1).
    return p2 * p1, p2 * q1 + q2 * s1, s2 * s1, p2 * c1 + q2 * d1 + c2, s2 * d1 + d2


@triton.jit
def _affine_av2(pa1, qa1, pc1, qc1, s1, ca1, cc1, d1, pa2, qa2, pc2, qc2, s2, ca2, cc2, d2):
    # `_affine_av` for the decoupled state (A^a, A^c, V).
    return (
        pa2 * pa1,
        pa2 * qa1 + qa2 * s1,
        pc2 * pc1,
        pc2 * qc1 + qc2 * s1,
        s2 * s1,
        pa2 * ca1 + qa2 * d1 + ca2,
        pc2 * cc1 + qc2 * d1 + cc2,
        s2 * d1 + d2,
    )


@triton.jit
def _min(a, b):
    return tl.minimum(a, b)


@triton.jit
def _sum_min(x1, i1, x2, i2):
    return x1 + x2, tl.minimum(i1, i2)


@triton.jit
def _gae_kernel(
    r_ptr,
    v_ptr,
    m_ptr,
    lv_ptr,
    lama_ptr,
    lamc_ptr,
    adv_ptr,
    ret_ptr,
    rec_ptr,
    B,
    T,
    gamma: tl.float64,
    lam_a: tl.float64,
    lam_c: tl.float64,
    HAS_LV: tl.constexpr,
    LAMA_ROWS: tl.constexpr,
    LAMC_ROWS: tl.constexpr,
    DECOUPLED: tl.constexpr,
    CHECK: tl.constexpr,
    GATHER: tl.constexpr,
    EVEN: tl.constexpr,
    BLOCK: tl.constexpr,
    STAGES: tl.constexpr,
):
    """One row per program. r, v: (B, T) float32/float64; m: (B, T) uint8; lv: (B,) (read
    when HAS_LV); lama/lamc: (B,) float64 lambdas (read when LAMA_ROWS/LAMC_ROWS, else the
    scalars lam_a/lam_c); outputs (B, T); rec: (B, 2) int64, written when CHECK."""
    row = tl.program_id(0).to(tl.int64)
    dt = r_ptr.dtype.element_ty
    base = row * T
    # gamma * lam multiplied in float64 and rounded once to the compute dtype, as the CPU
    # kernels do with a Python float (gamma arrives as fp64: a Python float argument would be
    # specialised as fp32 and cost float64 inputs ~1e-6).
    # (`zeros + x`, not `tl.cast(x)`: the interpreter would make a Python float fp32 first)
    f64 = tl.zeros([], tl.float64)
    g64 = f64 + gamma
    if LAMA_ROWS:
        la = tl.load(lama_ptr + row)
    else:
        la = f64 + lam_a
    if LAMC_ROWS:
        lc = tl.load(lamc_ptr + row)
    else:
        lc = f64 + lam_c
    g = g64.to(dt)
    gla = (g64 * la).to(dt)
    glc = (g64 * lc).to(dt)
    if HAS_LV:
        lv = tl.load(lv_ptr + row)
    else:
        lv = g * 0.0
    carry_a = g * 0.0  # A_{n+1} = 0, in the compute dtype
    carry_c = carry_a
    carry_v = lv  # the value after the last action: the bootstrap
    chk = tl.zeros([BLOCK], dtype=dt)
    n_chunks = tl.cdiv(T, BLOCK)
    for i in tl.range(0, n_chunks, num_stages=STAGES):
        start = tl.multiple_of((n_chunks - 1 - i) * BLOCK, BLOCK)
        offs = start + tl.arange(0, BLOCK)
        # Loads masked by bounds only (never by the action mask), so they vectorise; values
        # off the mask are read and then never enter the arithmetic (every use is a select).
        if EVEN:
            mk = tl.load(m_ptr + base + offs)
            r = tl.load(r_ptr + base + offs)
            v = tl.load(v_ptr + base + offs)
        else:
            inb = offs < T
            mk = tl.load(m_ptr + base + offs, mask=inb, other=0)
            r = tl.load(r_ptr + base + offs, mask=inb, other=0.0)
            v = tl.load(v_ptr + base + offs, mask=inb, other=0.0)
        m = mk != 0
        zero = r * 0.0
        one = zero + 1.0
        vz = tl.where(m, v, zero)
        first = offs == start
        if CHECK:
            chk += tl.where(m, (r - r) + (v - v), tl.abs(r))
        if GATHER:
            # The next action position after t, from the mask read one position on (an L1 hit):
            # a min-scan over t+1 .. the chunk's end + 1 (the first position of the later chunk).
            on = offs + 1
            m1 = tl.load(m_ptr + base + on, mask=on < T, other=0) != 0
            after = tl.associative_scan(tl.where(m1, on, _IDX_NONE), 0, _min, reverse=True)
            # the value there (read again: a cache hit), else the value carried from beyond
            has_next = after < _IDX_NONE
            vn = tl.load(v_ptr + base + tl.where(has_next, after, start), mask=has_next & m, other=0.0)
            vn = tl.where(has_next, vn, carry_v)
            act = tl.where(m, offs, _IDX_NONE)
            delta = tl.where(m, r + g * vn - vz, zero)
            p = tl.where(m, one * gla, one)
            if DECOUPLED:
                pc = tl.where(m, one * glc, one)
                PA, PC, CA, CC = tl.associative_scan((p, pc, delta, delta), 0, _affine2, reverse=True)
                a_t = PA * carry_a + CA
                c_t = PC * carry_c + CC
            else:
                PA, CA = tl.associative_scan((p, delta), 0, _affine, reverse=True)
                a_t = PA * carry_a + CA
                c_t = a_t
            # carries: A at the chunk's first position, and the value at its first action
            carry_a_new, f0 = tl.reduce((tl.where(first, a_t, zero), act), 0, _sum_min)
            if DECOUPLED:
                carry_c = tl.sum(tl.where(first, c_t, zero), 0)
            vf = tl.load(v_ptr + base + tl.minimum(f0, T - 1))
            carry_v = tl.where(f0 < _IDX_NONE, vf, carry_v)
            carry_a = carry_a_new
        else:
            q = tl.where(m, one * g, zero)
            s = tl.where(m, zero, one)
            c = tl.where(m, r - vz, zero)
            p = tl.where(m, one * gla, one)
            if DECOUPLED:
                pc = tl.where(m, one * glc, one)
                PA, QA, PC, QC, S, CA, CC, D = tl.associative_scan(
                    (p, q, pc, q, s, c, c, vz), 0, _affine_av2, reverse=True
                )
                a_t = PA * carry_a + QA * carry_v + CA
                c_t = PC * carry_c + QC * carry_v + CC
                carry_c = tl.sum(tl.where(first, c_t, zero), 0)
            else:
                PA, QA, S, CA, D = tl.associative_scan((p, q, s, c, vz), 0, _affine_av, reverse=True)
                a_t = PA * carry_a + QA * carry_v + CA
                c_t = a_t
            v_t = S * carry_v + D
            carry_a = tl.sum(tl.where(first, a_t, zero), 0)
            carry_v = tl.sum(tl.where(first, v_t, zero), 0)
        if EVEN:
            tl.store(adv_ptr + base + offs, tl.where(m, a_t, zero))
            tl.store(ret_ptr + base + offs, tl.where(m, c_t + vz, zero))
        else:
            tl.store(adv_ptr + base + offs, tl.where(m, a_t, zero), mask=inb)
            tl.store(ret_ptr + base + offs, tl.where(m, c_t + vz, zero), mask=inb)
    if CHECK:
        _write_record(
            r_ptr, v_ptr, m_ptr, rec_ptr, row, base, B, T, lv, la, lc, tl.sum(chk, 0) != 0,
            HAS_LV, LAMA_ROWS, LAMC_ROWS, BLOCK,
        )  # fmt: skip


@triton.jit
def _write_record(
    r_ptr, v_ptr, m_ptr, rec_ptr, row, base, B, T, lv, la, lc, bad_row,
    HAS_LV: tl.constexpr, LAMA_ROWS: tl.constexpr, LAMC_ROWS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """This row's (key, value) record: see the module docstring for the key."""
    S = 4 * tl.cast(T, tl.int64) + 4  # (T may be the constexpr 1)
    rk = S  # no value problem in this row
    if bad_row:  # cold: the first bad position of a row known to hold one
        for j in range(0, tl.cdiv(T, BLOCK)):
            offs = j * BLOCK + tl.arange(0, BLOCK)
            inb = offs < T
            m = tl.load(m_ptr + base + offs, mask=inb, other=0) != 0
            r = tl.load(r_ptr + base + offs, mask=inb, other=0.0)
            v = tl.load(v_ptr + base + offs, mask=inb, other=0.0)
            pos = 4 * (offs.to(tl.int64) + 1)
            k = tl.where(m & ((r - r) != 0), pos, S)
            k = tl.minimum(k, tl.where(m & ((v - v) != 0), pos + 1, S))
            k = tl.minimum(k, tl.where(inb & (m == 0) & (r != 0), pos + 2, S))
            rk = tl.minimum(rk, tl.min(k, 0))
    t = tl.maximum(rk // 4 - 1, 0)
    found = rk < S
    rv = tl.load(r_ptr + base + t, mask=found, other=0.0).to(tl.float64)
    vv = tl.load(v_ptr + base + t, mask=found, other=0.0).to(tl.float64)
    val = tl.where(rk % 4 == 1, vv, rv)
    if HAS_LV:
        bad_lv = (lv - lv) != 0
        rk = tl.where(bad_lv, 0, rk)
        val = tl.where(bad_lv, lv.to(tl.float64), val)
    key = tl.where(rk < S, 2 * B + row * S + rk, 9223372036854775807)
    if LAMC_ROWS:  # lambdas come first, as the eager check raises them before any value
        bad_lc = ~((lc >= 0) & (lc <= 1))  # also NaN
        key = tl.where(bad_lc, B + row, key)
        val = tl.where(bad_lc, lc, val)
    if LAMA_ROWS:
        bad_la = ~((la >= 0) & (la <= 1))
        key = tl.where(bad_la, row, key)
        val = tl.where(bad_la, la, val)
    tl.store(rec_ptr + row * 2, key)
    tl.store(rec_ptr + row * 2 + 1, val.to(tl.int64, bitcast=True))


# --------------------------------------------------------------------------- launch


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """How `_gae_kernel` is launched: positions per chunk, warps per program, loads in
    flight across chunks (`tl.range(num_stages=...)`), and the scan ("gather" or "affine")."""

    block: int
    warps: int
    stages: int
    scan: str

    def __str__(self) -> str:
        return f"block={self.block},warps={self.warps},stages={self.stages},scan={self.scan}"


def parse_config(text: str) -> dict:
    """`"block=1024,warps=4,stages=2,scan=gather"` (any subset) as keyword arguments of
    `LaunchConfig`; the form of `GAE_TRITON_CONFIG`. Unknown keys or values raise ValueError."""
    out: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, val = part.partition("=")
        key = key.strip()
        if key in ("block", "warps", "stages"):
            try:
                n = int(val)
            except ValueError:
                raise ValueError(f"GAE_TRITON_CONFIG: {key} must be an integer, got {val!r}") from None
            if n < 1 or (key != "stages" and n & (n - 1)):
                raise ValueError(f"GAE_TRITON_CONFIG: {key} must be a power of two >= 1, got {n}")
            out[key] = n
        elif key == "scan":
            if val not in ("gather", "affine"):
                raise ValueError(f"GAE_TRITON_CONFIG: scan must be gather or affine, got {val!r}")
            out[key] = val
        else:
            raise ValueError(
                f"GAE_TRITON_CONFIG: unknown key {key!r} in {text!r}; valid: block, warps, stages, scan"
            )
    return out


def launch_config(T: int, **override) -> LaunchConfig:
    """The launch for rows of T positions: `override`, then `GAE_TRITON_CONFIG`, then the
    defaults below.

    The defaults are chosen from the kernel compiled for sm_90, not yet from timings (no GPU
    has run this kernel: `bench/gpu.py` times a grid of launches and prints the fastest, to be
    put here). BLOCK 512 on 4 warps is 4 positions a thread: 63 registers and no spills
    (`bench/gae_sass.py`), so 8 programs fit an SM and all 1024 rows of a 1024 x 4096 batch are
    resident on an H100/H200's 132 SMs in one wave, at ~87 instructions a position in the hot
    loop. BLOCK 1024 costs fewer instructions a position (~73: the per-chunk reductions and
    barriers amortise over more positions) but 94 registers, 5 programs an SM, two waves; the
    kernel issue 8 shipped (BLOCK 2048 on 4 warps) took 196 registers, 2 programs an SM, four
    waves. One stage: with 8 rows an SM in flight, other programs' loads cover a program's
    scan, and a second stage costs 16 registers (two waves). Short rows get one chunk of the
    next power of two (at least 16); the interpreter (CPU tests) uses chunks of at most 64,
    which exercises the carries between chunks on small inputs.
    """
    env = os.environ.get("GAE_TRITON_CONFIG", "")
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if override:
        return _launch_config(T, env, interpret, **override)
    return _launch_config_cached(T, env, interpret)


def _launch_config(T: int, env: str, interpret: bool, **override) -> LaunchConfig:
    cfg = {"block": 512, "warps": 4, "stages": 1, "scan": "gather", **parse_config(env), **override}
    cap = 64 if interpret else cfg["block"]
    block = 16
    while block < T and block < cap:
        block *= 2
    return LaunchConfig(block=block, warps=cfg["warps"], stages=cfg["stages"], scan=cfg["scan"])


# every call launches with one: parsing and building it cost more than the launch's Python
_launch_config_cached = functools.lru_cache(maxsize=256)(_launch_config)


def gae_triton(
    r: torch.Tensor,
    v: torch.Tensor,
    m: torch.Tensor,
    lv: torch.Tensor | None,
    gamma: float,
    lam: float | torch.Tensor,
    *,
    lam_critic: float | torch.Tensor | None = None,
    check: bool = True,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    config: LaunchConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch one program per row; nothing waits for it.

    r, v: `(B, T)` float32/float64 of one dtype; m: `(B, T)` bool; lv: `(B,)` of that dtype, or
    None for 0 (terminal); `lam`, `lam_critic`: floats in [0, 1] or float64 `(B,)` tensors on
    the device (tensors are range-checked in the kernel); lam_critic None: returns from `lam`.
    `out=(adv, ret, rec)` preallocated (benchmarks). Returns `(advantages, returns, record)`,
    record the `(B, 2)` int64 per-row check records (None when `check` is False)."""
    B, T = r.shape
    r, v = r.contiguous(), v.contiguous()
    mu8 = m.contiguous().view(torch.uint8)
    if out is None:
        adv, ret = torch.empty_like(r), torch.empty_like(r)
        rec = torch.empty((B, 2), dtype=torch.int64, device=r.device) if check else None
    else:
        adv, ret, rec = out
    cfg = config or launch_config(T)
    la_rows = isinstance(lam, torch.Tensor)
    lc_rows = isinstance(lam_critic, torch.Tensor)
    dummy = adv  # pointer arguments a variant never reads
    _gae_kernel[(B,)](
        r,
        v,
        mu8,
        dummy if lv is None else lv.contiguous(),
        lam.contiguous() if la_rows else dummy,
        lam_critic.contiguous() if lc_rows else dummy,
        adv,
        ret,
        rec if rec is not None else dummy,
        B,
        T,
        float(gamma),
        0.0 if la_rows else float(lam),
        0.0 if lc_rows or lam_critic is None else float(lam_critic),
        HAS_LV=lv is not None,
        LAMA_ROWS=la_rows,
        LAMC_ROWS=lc_rows,
        DECOUPLED=lam_critic is not None,
        CHECK=check,
        GATHER=cfg.scan == "gather",
        EVEN=T % cfg.block == 0,
        BLOCK=cfg.block,
        STAGES=cfg.stages,
        num_warps=cfg.warps,
    )
    return adv, ret, rec

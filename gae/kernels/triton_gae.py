"""Triton GAE for CUDA: one program per row, a reverse associative scan per chunk.

Over a row, GAE with a non-contiguous mask is a first-order affine recurrence on the
pair y_t = (A_t, V_t): the advantage and value at the nearest action position >= t.

    action t:      A_t = gamma*lam*A_{t+1} + gamma*V_{t+1} + (r_t - v_t),   V_t = v_t
    non-action t:  y_t = y_{t+1}                                   (no step, no discount)

Each position is the affine map y -> P y + c with P = [[p, q], [0, s]] upper triangular
(action: p = gamma*lam, q = gamma, s = 0, c = (r - v, v); non-action: identity). Maps
compose associatively, so `tl.associative_scan(reverse=True)` evaluates a chunk of
positions in O(log BLOCK) depth, and the state at a chunk's first position carries
into the chunk before it. This replaces T kernel launches of a loop over T with one
launch that reads each byte once (Blelloch 1990, "Prefix sums and their applications").

Padding never enters the arithmetic: values are loaded only where the mask is set.
The input checks of the public API are computed in the same pass and written as three
first-bad positions per row.

Per-row and decoupled lambda (`_gae_row_lam`): each row reads its own (gamma, gamma*lam_a,
gamma*lam_c). With a critic lambda of its own the state grows to y_t = (A^a_t, A^c_t, V_t)
and the map to P = [[pa, 0, qa], [0, pc, qc], [0, 0, s]] (action: pa = gamma*lam_a,
pc = gamma*lam_c, qa = qc = gamma, s = 0; offsets (r - v, r - v, v)): still upper
triangular, still one associative scan, two accumulators in one pass over the bytes.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _compose(p1, q1, s1, c1, d1, p2, q2, s2, c2, d2):
    # The reverse scan combines the accumulated later maps (first argument) with an
    # earlier position's map (second): the result is  earlier ∘ later.
    p = p2 * p1
    q = p2 * q1 + q2 * s1
    s = s2 * s1
    c = p2 * c1 + q2 * d1 + c2
    d = s2 * d1 + d2
    return p, q, s, c, d


@triton.jit
def _compose2(pa1, qa1, pc1, qc1, s1, ca1, cc1, d1, pa2, qa2, pc2, qc2, s2, ca2, cc2, d2):
    # `_compose` for the decoupled state (A^a, A^c, V): earlier (2) ∘ later (1).
    pa = pa2 * pa1
    qa = pa2 * qa1 + qa2 * s1
    pc = pc2 * pc1
    qc = pc2 * qc1 + qc2 * s1
    s = s2 * s1
    ca = pa2 * ca1 + qa2 * d1 + ca2
    cc = pc2 * cc1 + qc2 * d1 + cc2
    d = s2 * d1 + d2
    return pa, qa, pc, qc, s, ca, cc, d


@triton.jit
def _checks(r, v, m, offs, inb, T, bad_r, bad_v, stray):
    # Input checks in the same pass: (x - x) != 0 holds exactly for NaN and inf.
    big = offs * 0 + T
    bad_r = tl.minimum(bad_r, tl.min(tl.where(inb & m & ((r - r) != 0), offs, big), 0))
    bad_v = tl.minimum(bad_v, tl.min(tl.where(inb & m & ((v - v) != 0), offs, big), 0))
    stray = tl.minimum(stray, tl.min(tl.where(inb & (m == 0) & (r != 0), offs, big), 0))
    return bad_r, bad_v, stray


@triton.jit
def _gae_row_body(
    r_ptr,
    v_ptr,
    m_ptr,
    lv_ptr,
    adv_ptr,
    ret_ptr,
    bad_ptr,
    T,
    row,
    gamma,
    gla,
    glc,
    BLOCK: tl.constexpr,
    DECOUPLED: tl.constexpr,
):
    """One row, chunks from the last: the affine scan per chunk, the carry between chunks, the
    input checks. gla = gamma*lam for the advantages; with DECOUPLED, glc = gamma*lam_critic
    for the returns through the 8-field scan, else the returns come from gla (5 fields)."""
    base = row * T
    carry_a = tl.load(lv_ptr + row) * 0.0  # A_{n+1} = 0, in the compute dtype
    carry_c = carry_a
    carry_v = tl.load(lv_ptr + row)  # V after the last action: the bootstrap
    bad_r = T
    bad_v = T
    stray = T
    n_chunks = tl.cdiv(T, BLOCK)
    for i in range(0, n_chunks):
        start = (n_chunks - 1 - i) * BLOCK
        offs = start + tl.arange(0, BLOCK)
        inb = offs < T
        m = tl.load(m_ptr + base + offs, mask=inb, other=0) != 0
        r = tl.load(r_ptr + base + offs, mask=inb, other=0.0)
        v = tl.load(v_ptr + base + offs, mask=inb & m, other=0.0)
        one = r * 0.0 + 1.0
        zero = r * 0.0
        p = tl.where(m, one * gla, one)
        q = tl.where(m, one * gamma, zero)
        s = tl.where(m, zero, one)
        c = tl.where(m, r - v, zero)
        d = tl.where(m, v, zero)
        first = offs == start
        if DECOUPLED:
            pc = tl.where(m, one * glc, one)
            PA, QA, PC, QC, S, CA, CC, D = tl.associative_scan(
                (p, q, pc, q, s, c, c, d), 0, _compose2, reverse=True
            )
            a_t = PA * carry_a + QA * carry_v + CA
            c_t = PC * carry_c + QC * carry_v + CC
            v_t = S * carry_v + D
            tl.store(adv_ptr + base + offs, tl.where(m, a_t, zero), mask=inb)
            tl.store(ret_ptr + base + offs, tl.where(m, c_t + v, zero), mask=inb)
            carry_c = tl.sum(tl.where(first, c_t, zero), 0)
        else:
            P, Q, S, C, D = tl.associative_scan((p, q, s, c, d), 0, _compose, reverse=True)
            a_t = P * carry_a + Q * carry_v + C
            v_t = S * carry_v + D
            tl.store(adv_ptr + base + offs, tl.where(m, a_t, zero), mask=inb)
            tl.store(ret_ptr + base + offs, tl.where(m, a_t + v, zero), mask=inb)
        # The state at the chunk's first position carries into the chunk before it.
        carry_a = tl.sum(tl.where(first, a_t, zero), 0)
        carry_v = tl.sum(tl.where(first, v_t, zero), 0)
        bad_r, bad_v, stray = _checks(r, v, m, offs, inb, T, bad_r, bad_v, stray)
    tl.store(bad_ptr + row * 3 + 0, bad_r)
    tl.store(bad_ptr + row * 3 + 1, bad_v)
    tl.store(bad_ptr + row * 3 + 2, stray)


@triton.jit
def _gae_row(
    r_ptr,
    v_ptr,
    m_ptr,
    lv_ptr,
    adv_ptr,
    ret_ptr,
    bad_ptr,
    T,
    coef_ptr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    # gamma and gamma*lam come in a tensor of the inputs' dtype: a Python float argument is
    # compiled as fp32, which would cost float64 inputs about 1e-6 of accuracy.
    gamma = tl.load(coef_ptr)
    gl = tl.load(coef_ptr + 1)
    _gae_row_body(r_ptr, v_ptr, m_ptr, lv_ptr, adv_ptr, ret_ptr, bad_ptr, T, row, gamma, gl, gl, BLOCK, False)


@triton.jit
def _gae_row_lam(
    r_ptr,
    v_ptr,
    m_ptr,
    lv_ptr,
    adv_ptr,
    ret_ptr,
    bad_ptr,
    T,
    coef_ptr,
    BLOCK: tl.constexpr,
    DECOUPLED: tl.constexpr,
):
    """`_gae_row` with per-row coefficients `coef_ptr[row] = (gamma, gamma*lam_a, gamma*lam_c)`
    (a (B, 3) tensor of the inputs' dtype). DECOUPLED False: returns from lam_a (5-field scan,
    the same float operations as `_gae_row`); True: the 8-field scan of (A^a, A^c, V)."""
    row = tl.program_id(0).to(tl.int64)
    gamma = tl.load(coef_ptr + row * 3)
    gla = tl.load(coef_ptr + row * 3 + 1)
    glc = tl.load(coef_ptr + row * 3 + 2)
    _gae_row_body(
        r_ptr, v_ptr, m_ptr, lv_ptr, adv_ptr, ret_ptr, bad_ptr, T, row, gamma, gla, glc, BLOCK, DECOUPLED
    )


def _block_for(T: int) -> int:
    # Enough lanes to cover short rows in one chunk, capped to keep the 5-field scan in
    # registers; the interpreter (CPU tests) prefers small blocks.
    cap = 64 if os.environ.get("TRITON_INTERPRET") == "1" else 2048
    b = 16
    while b < T and b < cap:
        b *= 2
    return b


def coefficients(gamma: float, lam: float, like: torch.Tensor) -> torch.Tensor:
    """(gamma, gamma * lam) in the dtype and on the device of `like`, as the kernel reads them."""
    return torch.tensor([gamma, gamma * lam], dtype=like.dtype, device=like.device)


def row_coefficients(gamma: float, lam, lam_critic, like: torch.Tensor) -> torch.Tensor:
    """(B, 3) rows of (gamma, gamma * lam_a, gamma * lam_c) in the dtype and on the device of
    `like`, as `_gae_row_lam` reads them: multiplied in float64, rounded once (as
    `coefficients` does for scalars). `lam`, `lam_critic`: floats or (B,) tensors; lam_critic
    None means lam."""
    B = like.shape[0]

    def rows(x) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return x.to(device=like.device, dtype=torch.float64)
        return torch.full((B,), float(x), dtype=torch.float64, device=like.device)

    la = rows(lam)
    lc = la if lam_critic is None else rows(lam_critic)
    g = torch.full((B,), float(gamma), dtype=torch.float64, device=like.device)
    return torch.stack([g, g * la, g * lc], dim=1).to(like.dtype).contiguous()


def gae_triton(r, v, m, lv, gamma: float, lam, *, lam_critic=None):
    """Launch one program per row. Inputs: float32/float64 `(B, T)`, bool mask, `(B,)` bootstrap;
    `lam` a float or (B,) tensor, `lam_critic` likewise or None (returns from `lam`). A float
    `lam` without `lam_critic` launches `_gae_row`, anything else `_gae_row_lam`.
    Returns (advantages, returns, (code, b, t)) with the codes of gae.kernels.cpu."""
    B, T = r.shape
    r, v = r.contiguous(), v.contiguous()
    mu8 = m.contiguous().view(torch.uint8)
    lv = lv.contiguous()
    adv = torch.empty_like(r)
    ret = torch.empty_like(r)
    bad = torch.empty((B, 3), dtype=torch.int32, device=r.device)
    if lam_critic is None and not isinstance(lam, torch.Tensor):
        _gae_row[(B,)](r, v, mu8, lv, adv, ret, bad, T, coefficients(gamma, lam, r), BLOCK=_block_for(T))
    else:
        coef = row_coefficients(gamma, lam, lam_critic, r)
        decoupled = lam_critic is not None
        _gae_row_lam[(B,)](r, v, mu8, lv, adv, ret, bad, T, coef, BLOCK=_block_for(T), DECOUPLED=decoupled)
    # One small (B, 3) transfer to report the first bad input in row-major order.
    bad_rows = (bad < T).any(1)
    if not bool(bad_rows.any()):
        if not bool(torch.isfinite(lv).all()):
            b = int((~torch.isfinite(lv)).nonzero()[0, 0])
            return adv, ret, (4, b, -1)
        return adv, ret, (0, -1, -1)
    b = int(bad_rows.nonzero()[0, 0])
    row = bad[b].tolist()
    t = min(row)
    code = {0: 1, 1: 2, 2: 3}[row.index(t)]
    lv_bad = ~torch.isfinite(lv[: b + 1])
    if bool(lv_bad.any()):
        return adv, ret, (4, int(lv_bad.nonzero()[0, 0]), -1)
    return adv, ret, (code, b, t)

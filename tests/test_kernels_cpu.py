"""The numba CPU kernels: rows are processed two at a time (plus a lone last row when B is
odd), so check that a row's result never depends on its position in the batch, that the
folded input check still names the first bad row and position, the `out=` path, and the
vectorised whitening moments against a float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gae.advantages import AdvantageInputError, compute_gae, gae_reference
from gae.kernels.cpu import _masked_moments, gae_cpu, whiten_cpu


def mixed_rows(B, T, *, seed, dtype=torch.float32):
    """Rows of different mask patterns: full, empty, a prefix, scattered, an observation
    span in the middle, a single action at the end; repeated to fill B."""
    g = torch.Generator().manual_seed(seed)
    patterns = [
        torch.ones(T, dtype=torch.bool),
        torch.zeros(T, dtype=torch.bool),
        torch.arange(T) < T // 3,
        torch.rand(T, generator=g) < 0.5,
        (torch.arange(T) < T // 4) | (torch.arange(T) >= T // 2),
        torch.arange(T) == T - 1,
    ]
    mask = torch.stack([patterns[(b + seed) % len(patterns)] for b in range(B)])
    rewards = torch.where(mask, torch.randn(B, T, generator=g, dtype=dtype), torch.zeros((), dtype=dtype))
    values = torch.randn(B, T, generator=g, dtype=dtype)
    last_value = torch.randn(B, generator=g, dtype=dtype)
    return rewards, values, mask, last_value


@pytest.mark.parametrize("B", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("T", [1, 37])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_interleaved_rows_match_reference(B, T, dtype):
    r, v, m, lv = mixed_rows(B, T, seed=B, dtype=dtype)
    adv, ret = compute_gae(r, v, m, gamma=0.97, lam=0.9, last_value=lv, backend="numba")
    ea, er = gae_reference(r, v, m, gamma=0.97, lam=0.9, last_value=lv)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(adv, ea, rtol=tol, atol=tol)
    torch.testing.assert_close(ret, er, rtol=tol, atol=tol)
    assert bool((adv[~m] == 0).all()) and bool((ret[~m] == 0).all())


@pytest.mark.parametrize("B", [3, 6, 7])
def test_row_result_does_not_depend_on_its_position(B):
    # A row computed as the first or second of a pair, or as the lone odd row, goes through
    # the same float operations: bit-identical to the row computed alone (B = 1).
    r, v, m, lv = mixed_rows(B, 50, seed=1)
    adv, ret = compute_gae(r, v, m, gamma=0.99, lam=0.95, last_value=lv, backend="numba")
    for b in range(B):
        a1, r1 = compute_gae(
            r[b : b + 1], v[b : b + 1], m[b : b + 1], gamma=0.99, lam=0.95, last_value=lv[b : b + 1]
        )
        assert torch.equal(adv[b : b + 1], a1) and torch.equal(ret[b : b + 1], r1), b
    # and reversing the batch (every row changes partner) changes nothing either
    ra, rr = compute_gae(r.flip(0), v.flip(0), m.flip(0), gamma=0.99, lam=0.95, last_value=lv.flip(0))
    assert torch.equal(ra.flip(0), adv) and torch.equal(rr.flip(0), ret)


def test_padding_garbage_bit_identical_with_odd_batch():
    r, v, m, lv = mixed_rows(5, 40, seed=3)
    a1, r1 = compute_gae(r, v, m, gamma=0.9, lam=0.7, last_value=lv)
    garbage = torch.where(m, v, torch.tensor(float("nan")))
    garbage[4, ~m[4]] = float("-inf")  # the lone odd row
    garbage[1, ~m[1]] = 3e38
    a2, r2 = compute_gae(r, garbage, m, gamma=0.9, lam=0.7, last_value=lv)
    assert torch.equal(a1, a2) and torch.equal(r1, r2)


@pytest.mark.parametrize(
    ("where", "tensor", "bad", "expected"),
    [
        # the second row of a pair, while a later row is also bad: the first bad row wins
        ((1, 4), "values", float("nan"), r"values\[1, 4\]"),
        # the lone odd row (B = 5)
        ((4, 0), "rewards", float("inf"), r"rewards\[4, 0\]"),
        # the first row of a pair, at the last position (the first the backward loop sees)
        ((2, 9), "values", float("-inf"), r"values\[2, 9\]"),
    ],
)
def test_first_bad_position_is_named(where, tensor, bad, expected):
    r, v, m, _ = mixed_rows(5, 10, seed=0)
    m[:] = True
    x = {"rewards": r, "values": v}[tensor]
    x[where] = bad
    v[3, 1] = float("nan")  # a later bad row must not be the one reported
    if where[0] > 3:
        v[3, 1] = 0.0
    with pytest.raises(AdvantageInputError, match=expected):
        compute_gae(r, v, m, gamma=1.0, lam=1.0, backend="numba")


def test_stray_reward_checks_are_exact():
    r, v, m, _ = mixed_rows(3, 8, seed=0)
    m[:, 5:] = False
    r[:, 5:] = 0.0
    r[2, 6] = -0.0  # negative zero is zero: not a stray reward
    compute_gae(r, v, m, gamma=1.0, lam=1.0, backend="numba")
    r[2, 7] = 1e-45  # the smallest float32 subnormal is not zero
    with pytest.raises(AdvantageInputError, match=r"rewards\[2, 7\].*non-action"):
        compute_gae(r, v, m, gamma=1.0, lam=1.0, backend="numba")


def test_non_finite_last_value_in_second_row_of_a_pair():
    r, v, m, lv = mixed_rows(4, 6, seed=2)
    lv[3] = float("nan")
    with pytest.raises(AdvantageInputError, match=r"last_value\[3\]"):
        compute_gae(r, v, m, gamma=0.5, lam=0.5, last_value=lv, backend="numba")


def test_out_buffers_are_written_in_place():
    r, v, m, lv = mixed_rows(5, 33, seed=4)
    adv, ret, code = gae_cpu(r, v, m, lv, 0.99, 0.95)
    oa = torch.full_like(r, 7.0)
    orr = torch.full_like(r, -7.0)
    a2, r2, code2 = gae_cpu(r, v, m, lv, 0.99, 0.95, out=(oa, orr))
    assert a2 is oa and r2 is orr
    assert code == code2 == (0, -1, -1)
    assert torch.equal(oa, adv) and torch.equal(orr, ret)
    with pytest.raises(ValueError, match=r"out\[1\] must be a CPU tensor of shape \(5, 33\)"):
        gae_cpu(r, v, m, lv, 0.99, 0.95, out=(oa, torch.empty(5, 32)))
    with pytest.raises(ValueError, match="contiguous"):
        gae_cpu(r, v, m, lv, 0.99, 0.95, out=(oa, torch.empty(33, 5).t()))


@pytest.mark.parametrize("T", [1, 7, 33])
def test_whiten_moments_match_float64(T):
    # A large offset makes an unshifted float32 sum of squares cancel; the kernel shifts by
    # the first action value and sums in float64.
    g = torch.Generator().manual_seed(T)
    x = torch.randn(9, T, generator=g) * 0.1 + 1000.0
    m = torch.rand(9, T, generator=g) < 0.6
    m[0, 0] = m[8, -1] = True
    x_garbage = torch.where(m, x, torch.tensor(float("nan")))
    n, mean, var = _masked_moments(x_garbage.numpy(), m.numpy())
    sel = x.double()[m].numpy()
    assert n == sel.size
    assert mean == pytest.approx(float(sel.mean()), rel=1e-12)
    assert var == pytest.approx(float(sel.var(ddof=1)), rel=1e-9)
    w = whiten_cpu(x_garbage, m, shift_mean=True, eps=0.0)
    expected = (sel - sel.mean()) / np.sqrt(sel.var(ddof=1))
    np.testing.assert_allclose(w[m].double().numpy(), expected, rtol=1e-4, atol=1e-4)
    assert bool((w[~m] == 0).all())


def test_pooled_outputs_live_as_long_as_any_view():
    from gae.kernels import cpu

    shape = (cpu._POOL_MIN_BYTES // 4 // 64 + 1, 64)  # just above the pool threshold
    a = cpu.empty_output(shape, torch.float32)
    assert a.is_contiguous() and a.shape == shape and a.dtype == torch.float32
    a.fill_(1.5)
    view = a[1:3]
    ptr = a.data_ptr()
    del a  # the view still holds the buffer: it must not be handed out again
    b = cpu.empty_output(shape, torch.float32)
    assert b.data_ptr() != ptr
    b.fill_(-2.0)
    assert bool((view == 1.5).all())
    del view  # now the buffer is idle and the next request of that size reuses it
    c = cpu.empty_output(shape, torch.float32)
    assert c.data_ptr() == ptr
    # small requests and other dtypes are plain torch.empty
    assert cpu.empty_output((3, 4), torch.float32).shape == (3, 4)
    assert cpu.empty_output(shape, torch.bfloat16).dtype == torch.bfloat16


def test_pooled_gae_outputs_are_rewritten_completely():
    # A reused buffer holds the previous call's numbers: every position (padding
    # included) must be written again. Large enough for the pool.
    r, v, m, lv = mixed_rows(64, 4100, seed=6)
    a1, r1 = compute_gae(r, v, m, gamma=0.9, lam=0.9, last_value=lv)
    first = (a1.clone(), r1.clone())
    a1.fill_(float("nan"))
    r1.fill_(float("nan"))
    del a1, r1
    a2, r2 = compute_gae(r, v, m, gamma=0.9, lam=0.9, last_value=lv)
    assert torch.equal(a2, first[0]) and torch.equal(r2, first[1])

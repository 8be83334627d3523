"""Property-based checks (hypothesis): the fast path equals the reference on arbitrary
shapes, masks, discounts and bootstraps, and padding never leaks."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gae.advantages import compute_gae, gae_reference

unit = st.sampled_from([0.0, 0.3, 0.5, 0.9, 0.95, 0.99, 1.0])


@st.composite
def batches(draw):
    B = draw(st.integers(1, 6))
    T = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    p = draw(st.floats(0.0, 1.0))
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(B, T, generator=g) < p
    r = torch.where(
        m, torch.randn(B, T, generator=g, dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    )
    v = torch.randn(B, T, generator=g, dtype=torch.float64)
    lv = torch.randn(B, generator=g, dtype=torch.float64) if draw(st.booleans()) else None
    return r, v, m, lv


@settings(max_examples=60, deadline=None)
@given(batches(), unit, unit)
def test_numba_equals_reference(batch, gamma, lam):
    r, v, m, lv = batch
    a, ret = compute_gae(r, v, m, gamma=gamma, lam=lam, last_value=lv)
    ra, rret = gae_reference(r, v, m, gamma=gamma, lam=lam, last_value=lv)
    torch.testing.assert_close(a, ra, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ret, rret, rtol=1e-9, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(batches(), unit, unit, st.sampled_from([float("nan"), float("inf"), -1e300, 0.0]))
def test_padding_values_never_leak(batch, gamma, lam, fill):
    r, v, m, lv = batch
    a1, r1 = compute_gae(r, v, m, gamma=gamma, lam=lam, last_value=lv)
    a2, r2 = compute_gae(
        r, torch.where(m, v, torch.tensor(fill, dtype=v.dtype)), m, gamma=gamma, lam=lam, last_value=lv
    )
    assert torch.equal(a1, a2) and torch.equal(r1, r2)
    assert bool((a1[~m] == 0).all())

"""GAE: hand-computed cases, every backend against the float64 reference, invariances,
special cases and input validation (advantages-spec.md)."""

from __future__ import annotations

import pytest
import torch

from gae.advantages import AdvantageInputError, compute_gae, gae_reference
from gae.kernels import triton_available

BACKENDS = ["numba", "torch"] + (["triton"] if triton_available() else [])
GAMMA_LAM = [(g, lam) for g in (0.0, 0.5, 0.95, 1.0) for lam in (0.0, 0.5, 0.95, 1.0)]


def random_batch(B, T, *, seed, p_action=0.7, contiguous=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    if contiguous:
        lengths = torch.randint(0, T + 1, (B,), generator=g)
        mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    else:
        mask = torch.rand(B, T, generator=g) < p_action
    rewards = torch.where(mask, torch.randn(B, T, generator=g, dtype=dtype), torch.zeros((), dtype=dtype))
    values = torch.randn(B, T, generator=g, dtype=dtype)
    last_value = torch.randn(B, generator=g, dtype=dtype)
    return rewards, values, mask, last_value


def test_hand_computed_contiguous():
    # One row, actions at t = 0, 1, 2, then padding; gamma = 0.5, lam = 0.5, last_value = 0.
    # r = [0, 0, 1], V = [1, 2, 4]
    # delta_2 = 1 + 0.5*0 - 4 = -3        A_2 = -3
    # delta_1 = 0 + 0.5*4 - 2 = 0         A_1 = 0 + 0.25*(-3) = -0.75
    # delta_0 = 0 + 0.5*2 - 1 = 0         A_0 = 0 + 0.25*(-0.75) = -0.1875
    # returns = A + V = [0.8125, 1.25, 1.0]
    r = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    v = torch.tensor([[1.0, 2.0, 4.0, 123.0]])
    m = torch.tensor([[True, True, True, False]])
    for backend in ["reference", *BACKENDS]:
        adv, ret = compute_gae(r, v, m, gamma=0.5, lam=0.5, backend=backend)
        assert adv.tolist() == [[-0.1875, -0.75, -3.0, 0.0]], backend
        assert ret.tolist() == [[0.8125, 1.25, 1.0, 0.0]], backend


def test_hand_computed_observation_tokens_and_bootstrap():
    # Actions at t = 0 and t = 3 (t = 1, 2 are tool output), gamma = 1, lam = 1, last_value = 10.
    # r = [0, ., ., 2], V = [1, ., ., 3]
    # delta_3 = 2 + 1*10 - 3 = 9          A_3 = 9
    # delta_0 = 0 + 1*3 - 1 = 2           A_0 = 2 + 9 = 11   (observation tokens: no step)
    r = torch.tensor([[0.0, 0.0, 0.0, 2.0]])
    v = torch.tensor([[1.0, -50.0, 77.0, 3.0]])
    m = torch.tensor([[1, 0, 0, 1]])
    for backend in ["reference", *BACKENDS]:
        adv, ret = compute_gae(r, v, m, gamma=1.0, lam=1.0, last_value=torch.tensor([10.0]), backend=backend)
        assert adv.tolist() == [[11.0, 0.0, 0.0, 9.0]], backend
        assert ret.tolist() == [[12.0, 0.0, 0.0, 12.0]], backend


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (7, 1), (6, 33), (4, 130)])
def test_backends_match_reference(backend, contiguous, shape):
    B, T = shape
    for i, (gamma, lam) in enumerate(GAMMA_LAM):
        if backend == "triton" and i % 4:  # the interpreter is slow; a quarter of the grid
            continue
        r, v, m, lv = random_batch(B, T, seed=B * 1000 + T + i, contiguous=contiguous, dtype=torch.float64)
        ref_a, ref_r = gae_reference(r, v, m, gamma=gamma, lam=lam, last_value=lv)
        for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-4)):
            adv, ret = compute_gae(
                r.to(dtype), v.to(dtype), m, gamma=gamma, lam=lam, last_value=lv.to(dtype), backend=backend
            )
            assert adv.dtype == dtype
            torch.testing.assert_close(adv.double(), ref_a, rtol=tol, atol=tol)
            torch.testing.assert_close(ret.double(), ref_r, rtol=tol, atol=tol)
            assert bool((adv[~m] == 0).all()) and bool((ret[~m] == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_rows_and_empty_batch(backend):
    r, v, m, lv = random_batch(5, 20, seed=3)
    m[1] = False
    m[3] = False
    r = torch.where(m, r, 0.0)
    adv, ret = compute_gae(r, v, m, gamma=0.9, lam=0.9, last_value=lv, backend=backend)
    assert bool((adv[[1, 3]] == 0).all()) and bool((ret[[1, 3]] == 0).all())
    ea, er = compute_gae(
        torch.zeros(0, 5), torch.zeros(0, 5), torch.zeros(0, 5, dtype=torch.bool), gamma=1, lam=1
    )
    assert ea.shape == (0, 5) and er.shape == (0, 5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_garbage_is_bit_identical(backend):
    r, v, m, lv = random_batch(8, 64, seed=11)
    a1, r1 = compute_gae(r, v, m, gamma=0.99, lam=0.95, last_value=lv, backend=backend)
    garbage = torch.where(m, v, torch.tensor(float("nan")))
    garbage[0, ~m[0]] = float("inf")
    garbage[1, ~m[1]] = 1e30
    a2, r2 = compute_gae(r, garbage, m, gamma=0.99, lam=0.95, last_value=lv, backend=backend)
    assert torch.equal(a1, a2) and torch.equal(r1, r2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    r, v, m, lv = random_batch(12, 40, seed=5)
    big_r = torch.zeros(12, 80)
    big_r[:, ::2] = r
    big_v = torch.randn(80, 12).t()  # transposed storage
    big_v[:, ::2] = v
    big_m = torch.zeros(12, 80, dtype=torch.bool)
    big_m[:, ::2] = m
    a1, r1 = compute_gae(
        big_r[:, ::2], big_v[:, ::2], big_m[:, ::2], gamma=0.9, lam=0.8, last_value=lv, backend=backend
    )
    a2, r2 = compute_gae(r, v, m, gamma=0.9, lam=0.8, last_value=lv, backend=backend)
    assert torch.equal(a1, a2) and torch.equal(r1, r2)


def test_lam_zero_is_td_error_and_lam_one_is_return_to_go():
    r, v, m, _ = random_batch(3, 25, seed=7, contiguous=True, dtype=torch.float64)
    gamma = 0.9
    adv0, _ = compute_gae(r, v, m, gamma=gamma, lam=0.0)
    adv1, _ = compute_gae(r, v, m, gamma=gamma, lam=1.0)
    for b in range(3):
        steps = m[b].nonzero().flatten().tolist()
        for k, t in enumerate(steps):
            v_next = v[b, steps[k + 1]].item() if k + 1 < len(steps) else 0.0
            td = r[b, t].item() + gamma * v_next - v[b, t].item()
            assert adv0[b, t].item() == pytest.approx(td, abs=1e-12)
            g = sum(gamma**j * r[b, s].item() for j, s in enumerate(steps[k:]))
            assert adv1[b, t].item() == pytest.approx(g - v[b, t].item(), abs=1e-10)


def test_gamma_lam_one_is_sum_of_future_rewards_minus_value():
    r, v, m, _ = random_batch(4, 30, seed=9, dtype=torch.float64)
    adv, ret = compute_gae(r, v, m, gamma=1.0, lam=1.0)
    future = torch.where(m, r, 0.0).flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(adv[m], (future - v)[m])
    torch.testing.assert_close(ret[m], future[m])


def test_half_precision_inputs_compute_in_float32():
    r, v, m, lv = random_batch(4, 50, seed=2)
    for dtype in (torch.float16, torch.bfloat16):
        adv, ret = compute_gae(r.to(dtype), v.to(dtype), m, gamma=0.95, lam=0.9, last_value=lv)
        assert adv.dtype == dtype
        ref, _ = compute_gae(
            r.to(dtype).float(), v.to(dtype).float(), m, gamma=0.95, lam=0.9, last_value=lv.to(dtype).float()
        )
        torch.testing.assert_close(adv.float(), ref, rtol=1e-2, atol=1e-2)


def test_float_and_int_masks_equal_bool_mask():
    r, v, m, lv = random_batch(3, 20, seed=4)
    a, _ = compute_gae(r, v, m, gamma=0.9, lam=0.9)
    for mm in (m.float(), m.long(), m.to(torch.uint8)):
        assert torch.equal(compute_gae(r, v, mm, gamma=0.9, lam=0.9)[0], a)


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_nan_reward_at_action_names_first_position(backend):
    r, v, m, _ = random_batch(4, 10, seed=1, p_action=1.0)
    r[2, 7] = float("nan")
    r[2, 3] = float("inf")
    r[3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"rewards\[2, 3\] is inf at an action position"):
        compute_gae(r, v, m, gamma=1, lam=1, backend=backend)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_nan_value_at_action(backend):
    r, v, m, _ = random_batch(4, 10, seed=1, p_action=1.0)
    v[1, 4] = float("nan")
    with pytest.raises(ValueError, match=r"values\[1, 4\] is nan"):
        compute_gae(r, v, m, gamma=1, lam=1, backend=backend)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_stray_reward_at_non_action_is_an_error(backend):
    r, v, m, _ = random_batch(3, 12, seed=1)
    b, t = (~m).nonzero()[0].tolist()
    r[b, t] = 1.0
    with pytest.raises(ValueError, match=rf"rewards\[{b}, {t}\] = 1.0 at a non-action position"):
        compute_gae(r, v, m, gamma=1, lam=1, backend=backend)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_non_finite_last_value(backend):
    r, v, m, lv = random_batch(3, 12, seed=1)
    lv[2] = float("nan")
    with pytest.raises(ValueError, match=r"last_value\[2\] is nan"):
        compute_gae(r, v, m, gamma=1, lam=1, last_value=lv, backend=backend)


def test_argument_validation_messages():
    r = torch.zeros(2, 3)
    m = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="values has shape"):
        compute_gae(r, torch.zeros(2, 4), m, gamma=1, lam=1)
    with pytest.raises(ValueError, match="mask has shape"):
        compute_gae(r, r, torch.ones(3, 2, dtype=torch.bool), gamma=1, lam=1)
    with pytest.raises(ValueError, match="rewards must have a floating-point dtype"):
        compute_gae(torch.zeros(2, 3, dtype=torch.long), r, m, gamma=1, lam=1)
    with pytest.raises(ValueError, match="values must be 2-D"):
        compute_gae(r, torch.zeros(6), m, gamma=1, lam=1)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\], got 1.5"):
        compute_gae(r, r, m, gamma=1.5, lam=1)
    with pytest.raises(ValueError, match=r"lam must be in \[0, 1\], got -0.1"):
        compute_gae(r, r, m, gamma=1, lam=-0.1)
    with pytest.raises(ValueError, match="lam must be in"):
        compute_gae(r, r, m, gamma=1, lam=float("nan"))
    with pytest.raises(ValueError, match=r"last_value must have shape \(2,\)"):
        compute_gae(r, r, m, gamma=1, lam=1, last_value=torch.zeros(3))
    with pytest.raises(ValueError, match="backend must be one of"):
        compute_gae(r, r, m, gamma=1, lam=1, backend="fortran")
    with pytest.raises(TypeError):  # AdvantageInputError is both
        compute_gae(r, r, "mask", gamma=1, lam=1)
    assert issubclass(AdvantageInputError, ValueError)

"""Per-row, decoupled and length-adaptive lambda in every GAE backend (issue 15).

The reference here is written from the closed form, not the recursion the backends use:
over a row's action positions t_1 < ... < t_n,

    A_k = sum_{j >= k} prod_{i=k}^{j-1} (gamma * lam) * delta_j      (the recursion unrolled)

with delta_j = r_{t_j} + gamma * V_{t_{j+1}} - V_{t_j}, V_{t_{n+1}} = last_value, evaluated in
float64 with one lambda for the advantages (lam_a[b]) and one for the returns (lam_c[b]).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from gae.advantages import (
    AdvantageInputError,
    _gae_torch_loop,
    compute_gae,
    gae_reference,
    length_adaptive_lam,
    raise_pending,
)
from gae.estimators import (
    estimate,
)
from gae.kernels import triton_available
from gae.kernels.cpu import gae_cpu

BACKENDS = ["reference", "torch", "numba"] + (["triton"] if triton_available() else [])
# Triton runs on CUDA where there is a GPU, else through its interpreter on CPU (conftest)
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float64]


def cases(*shapes: int):
    """(backend, dtype[, T]) cases: every combination, except that the Triton interpreter
    (~1 s a launch on CPU) runs float32 and the last T only (the kernel is the same code for
    float64, which the other backends and the CUDA runs check)."""
    out = []
    for backend in BACKENDS:
        for dtype in DTYPES:
            for T in shapes or (None,):
                interpreted = backend == "triton" and TRITON_DEVICE == "cpu"
                if interpreted and (dtype != torch.float32 or (shapes and shapes[-1] != T)):
                    continue
                dims = (backend, dtype) if T is None else (backend, dtype, T)
                out.append(pytest.param(*dims, id="-".join(map(str, dims)).replace("torch.", "")))
    return out


def gae(rewards, values, mask, *, backend="auto", **kw):
    """compute_gae on the backend's device; the outputs back on the CPU."""
    dev = TRITON_DEVICE if backend == "triton" else "cpu"

    def to(x):
        return x.to(dev) if isinstance(x, torch.Tensor) else x

    adv, ret = compute_gae(
        to(rewards), to(values), to(mask), backend=backend, **{k: to(x) for k, x in kw.items()}
    )
    raise_pending()  # on CUDA the input checks are deferred: raised here, before reading back
    return adv.cpu(), ret.cpu()


def closed_form(rewards, values, mask, last_value, gamma, lam_a, lam_c):
    """(A(lam_a), A(lam_c) + V) from the unrolled sum, in float64 (B, T); 0 off the mask."""
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    ret = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        ts = [t for t in range(T) if bool(mask[b, t])]
        n = len(ts)
        v = [float(values[b, t]) for t in ts] + [float(last_value[b])]
        delta = [float(rewards[b, ts[j]]) + gamma * v[j + 1] - v[j] for j in range(n)]
        for k in range(n):
            for out, lam in ((adv, float(lam_a[b])), (ret, float(lam_c[b]))):
                out[b, ts[k]] = sum((gamma * lam) ** (j - k) * delta[j] for j in range(k, n))
            ret[b, ts[k]] += v[k]
    return adv, ret


def batch(B, T, *, seed, dtype=torch.float32):
    """Non-contiguous masks (an observation span, scattered actions), an empty row, a
    one-action row, a full row; a truncation bootstrap on some rows, terminal (0) on others."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, T, generator=g) < 0.6
    assert B >= 7
    mask[0] = False  # empty row
    mask[1] = torch.arange(T) == T - 1  # one action, at the end
    mask[2] = True  # full row
    mask[3] = (torch.arange(T) < T // 4) | (torch.arange(T) >= T // 2)  # a tool span in the middle
    rewards = torch.where(mask, torch.randn(B, T, generator=g, dtype=dtype), torch.zeros((), dtype=dtype))
    values = torch.randn(B, T, generator=g, dtype=dtype)
    truncated = torch.rand(B, generator=g) < 0.5
    last_value = torch.where(
        truncated, torch.randn(B, generator=g, dtype=dtype), torch.zeros((), dtype=dtype)
    )
    lam_a = torch.rand(B, generator=g, dtype=torch.float64)
    lam_a[4], lam_a[5] = 0.0, 1.0  # the ends of the range
    lam_c = torch.rand(B, generator=g, dtype=torch.float64)
    lam_c[6] = 1.0
    return rewards, values, mask, last_value, lam_a, lam_c


# T = 70: two Triton chunks under the interpreter (BLOCK 64), the case it keeps on CPU
@pytest.mark.parametrize(("backend", "dtype", "T"), cases(1, 9, 70))
def test_per_row_and_decoupled_lambda_match_the_closed_form(backend, dtype, T):
    B = 9
    r, v, m, lv, lam_a, lam_c = batch(B, T, seed=T, dtype=dtype)
    tol = dict(atol=2e-5, rtol=2e-5) if dtype == torch.float32 else dict(atol=1e-11, rtol=1e-11)
    # the Triton interpreter costs ~1 s a launch: one gamma there
    for gamma in (0.9,) if backend == "triton" else (1.0, 0.9):
        for la, lc in ((lam_a, lam_c), (lam_a, None), (0.95, 1.0), (0.95, lam_c), (lam_a, 1.0)):
            adv, ret = gae(r, v, m, gamma=gamma, lam=la, lam_critic=lc, last_value=lv, backend=backend)
            assert adv.dtype == dtype and ret.dtype == dtype
            rows_a = la if isinstance(la, torch.Tensor) else torch.full((B,), la, dtype=torch.float64)
            rows_c = rows_a if lc is None else lc if isinstance(lc, torch.Tensor) else torch.full((B,), lc)
            ea, er = closed_form(r.double(), v.double(), m, lv.double(), gamma, rows_a, rows_c)
            torch.testing.assert_close(adv.double(), ea, **tol)
            torch.testing.assert_close(ret.double(), er, **tol)
            assert bool((adv[~m] == 0).all()) and bool((ret[~m] == 0).all())


@pytest.mark.parametrize(("backend", "dtype"), cases())
def test_equal_critic_lambda_is_bit_identical_to_single_lambda_gae(backend, dtype):
    r, v, m, lv, lam_a, _ = batch(7, 70, seed=1, dtype=dtype)
    adv, ret = gae(r, v, m, gamma=0.99, lam=0.95, last_value=lv, backend=backend)
    a2, r2 = gae(r, v, m, gamma=0.99, lam=0.95, lam_critic=0.95, last_value=lv, backend=backend)
    assert torch.equal(adv, a2) and torch.equal(ret, r2)
    # one lambda per row, all equal (float64, as a Python float is): the per-row path
    same = torch.full((7,), 0.95, dtype=torch.float64)
    a3, r3 = gae(r, v, m, gamma=0.99, lam=same, lam_critic=same, last_value=lv, backend=backend)
    assert torch.equal(adv, a3) and torch.equal(ret, r3)
    # per-row lambdas, decoupled with the same values: bit-identical to the coupled per-row call
    a4, r4 = gae(r, v, m, gamma=0.99, lam=lam_a, last_value=lv, backend=backend)
    a5, r5 = gae(r, v, m, gamma=0.99, lam=lam_a, lam_critic=lam_a.clone(), last_value=lv, backend=backend)
    assert torch.equal(a4, a5) and torch.equal(r4, r5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_two_accumulator_kernels_with_equal_lambdas_are_bit_identical_to_the_single_lambda_kernels(dtype):
    """compute_gae routes equal lambdas to the single-accumulator path; the two-accumulator
    kernels themselves, forced to run with equal lambdas, give the same bits too."""
    r, v, m, lv, _, _ = batch(7, 70, seed=2, dtype=dtype)
    adv, ret = gae(r, v, m, gamma=0.99, lam=0.95, last_value=lv, backend="numba")
    a, q, code = gae_cpu(r, v, m, lv, 0.99, 0.95, lam_critic=0.95)
    assert code == (0, -1, -1) and torch.equal(a, adv) and torch.equal(q, ret)
    ta, tr = gae(r, v, m, gamma=0.99, lam=0.95, last_value=lv, backend="torch")
    a, q = _gae_torch_loop(r, v, m, lv, 0.99, 0.95, 0.95)
    assert torch.equal(a, ta) and torch.equal(q, tr)
    if triton_available() and (TRITON_DEVICE == "cuda" or dtype == torch.float32):  # see `cases`
        from gae.kernels.triton_gae import gae_triton

        xa, xr = gae(r, v, m, gamma=0.99, lam=0.95, last_value=lv, backend="triton")
        d = TRITON_DEVICE
        a, q, rec = gae_triton(r.to(d), v.to(d), m.to(d), lv.to(d), 0.99, 0.95, lam_critic=0.95)
        assert bool((rec[:, 0] == 2**63 - 1).all()) and torch.equal(a.cpu(), xa) and torch.equal(q.cpu(), xr)


def test_critic_lambda_one_gives_monte_carlo_returns_whatever_the_values():
    """VC-PPO's point: with lam_critic = 1 the critic's targets are the discounted return-to-go
    (bootstrapped only from last_value), so a bad critic cannot bias its own targets."""
    r, v, m, lv, _, _ = batch(7, 12, seed=3, dtype=torch.float64)
    _, ret1 = gae(r, v, m, gamma=0.9, lam=0.5, lam_critic=1.0, last_value=lv)
    _, ret2 = gae(r, 100 * torch.randn_like(v), m, gamma=0.9, lam=0.5, lam_critic=1.0, last_value=lv)
    torch.testing.assert_close(ret1, ret2, atol=1e-9, rtol=1e-9)
    # by hand on one row: actions at t = 0, 2; r = [1, ., 2], last_value 3, gamma 0.9
    # R_2 = 2 + 0.9 * 3 = 4.7; R_0 = 1 + 0.9 * 4.7 = 5.23
    r1 = torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64)
    m1 = torch.tensor([[True, False, True]])
    for backend in BACKENDS:
        _, ret = gae(
            r1,
            torch.tensor([[7.0, -3.0, 11.0]], dtype=torch.float64),
            m1,
            gamma=0.9,
            lam=0.0,
            lam_critic=1.0,
            last_value=torch.tensor([3.0], dtype=torch.float64),
            backend=backend,
        )
        assert ret[0].tolist() == pytest.approx([5.23, 0.0, 4.7], abs=1e-12), backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_garbage_never_changes_decoupled_outputs(backend):
    r, v, m, lv, lam_a, lam_c = batch(8, 40, seed=4)
    a1, r1 = gae(r, v, m, gamma=0.97, lam=lam_a, lam_critic=lam_c, last_value=lv, backend=backend)
    garbage = torch.where(m, v, torch.tensor(float("nan")))
    garbage[3, ~m[3]] = float("inf")
    a2, r2 = gae(r, garbage, m, gamma=0.97, lam=lam_a, lam_critic=lam_c, last_value=lv, backend=backend)
    assert torch.equal(a1, a2) and torch.equal(r1, r2)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_bad_inputs_are_named_on_the_per_row_path(backend):
    r, v, m, lv, lam_a, lam_c = batch(7, 10, seed=5)
    m[:] = True
    v[3, 4] = float("nan")
    with pytest.raises(AdvantageInputError, match=r"values\[3, 4\]"):
        gae(r, v, m, gamma=1.0, lam=lam_a, lam_critic=lam_c, backend=backend)


def test_length_adaptive_lambda_is_vapos_formula():
    T = 4000
    lengths = torch.tensor([0, 1, 10, 20, 21, 400, 4000])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    lam = length_adaptive_lam(mask, 0.05)
    assert lam.dtype == torch.float64 and lam.shape == (7,)
    # 1 - 1/(0.05 l): l = 20 -> 0; l < 20 -> negative, clipped to 0; empty row -> 0
    expected = [0.0, 0.0, 0.0, 0.0, 1 - 1 / 1.05, 0.95, 0.995]
    assert lam.tolist() == pytest.approx(expected, abs=1e-15)
    # random lengths, non-contiguous masks: l counts action tokens, not the span
    g = torch.Generator().manual_seed(6)
    m = torch.rand(64, 300, generator=g) < torch.rand(64, 1, generator=g)
    for alpha in (0.01, 0.05, 0.5, 3.0):
        lam = length_adaptive_lam(m, alpha)
        for b in range(64):
            ell = int(m[b].sum())
            want = min(1.0, max(0.0, 1 - 1 / (alpha * ell))) if ell else 0.0
            assert lam[b].item() == pytest.approx(want, abs=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gae_with_length_adaptive_lambda_matches_the_closed_form(backend):
    r, v, m, lv, _, _ = batch(9, 60, seed=7)
    lam = length_adaptive_lam(m, 0.05)
    assert 0 < int((lam > 0).sum()) < 9  # some rows past 1/alpha = 20 tokens, some not
    adv, ret = gae(r, v, m, gamma=1.0, lam=lam, lam_critic=1.0, last_value=lv, backend=backend)
    ea, er = closed_form(r.double(), v.double(), m, lv.double(), 1.0, lam, torch.ones(9, dtype=torch.float64))
    torch.testing.assert_close(adv.double(), ea, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(ret.double(), er, atol=2e-5, rtol=2e-5)


def test_estimate_passes_lam_critic_and_per_row_lam():
    r, v, m, lv, lam_a, lam_c = batch(7, 20, seed=8)
    adv, ret = estimate("gae", rewards=r, values=v, mask=m, lam=lam_a, lam_critic=lam_c, last_value=lv)
    ea, er = gae_reference(r, v, m, gamma=1.0, lam=lam_a, lam_critic=lam_c, last_value=lv)
    torch.testing.assert_close(adv, ea, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret, er, atol=1e-5, rtol=1e-5)
    with pytest.raises(AdvantageInputError, match="lam_critic"):
        estimate("uniform", rewards=r, values=v, mask=m, horizon=4, lam_critic=1.0)


def test_lambda_validation_names_the_argument_and_row():
    r, v, m, _, _, _ = batch(7, 6, seed=9)
    bad = torch.tensor([0.5, 0.9, 1.5, 0.2, 0, 0, 0], dtype=torch.float64)
    with pytest.raises(AdvantageInputError, match=r"lam\[2\] is 1.5"):
        compute_gae(r, v, m, gamma=1.0, lam=bad)
    with pytest.raises(AdvantageInputError, match=r"lam_critic\[0\] is nan"):
        compute_gae(r, v, m, gamma=1.0, lam=0.9, lam_critic=torch.tensor([math.nan, 1, 1, 1, 1, 1, 1.0]))
    with pytest.raises(AdvantageInputError, match=r"lam must be a float or a \(7,\) tensor"):
        compute_gae(r, v, m, gamma=1.0, lam=torch.ones(3))
    with pytest.raises(AdvantageInputError, match="lam_critic must be in"):
        compute_gae(r, v, m, gamma=1.0, lam=0.9, lam_critic=-0.1)
    with pytest.raises(AdvantageInputError, match="floating-point"):
        compute_gae(r, v, m, gamma=1.0, lam=torch.ones(7, dtype=torch.int64))
    with pytest.raises(AdvantageInputError, match="length_alpha"):
        length_adaptive_lam(m, 0.0)


# Compiles the per-row kernel for an H100 (sm_90) with Triton's bundled NVIDIA toolchain, no GPU
# needed, for both scans of each lambda (one accumulator; per-row and decoupled: two) in float32
# and float64, typed as Triton's launcher types `gae_triton`'s call (bench/gae_sass.py).
AOT_SCRIPT = """
import json, sys
from bench.gae_sass import compile_sm90
from gae.kernels.triton_gae import launch_config

out = {}
for dt, T in (("fp32", 4096), ("fp64", 8192)):
    for decoupled in (False, True):
        for scan in ("gather", "affine"):
            k = compile_sm90(dt, T, launch_config(T, scan=scan), decoupled=decoupled)
            out[f"{dt}/{decoupled}/{scan}"] = k["cubin"] if k["spilled"] == 0 else -1
json.dump(out, sys.stdout)
"""


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_per_row_triton_kernel_compiles_for_h100():
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton.backends.nvidia", reason="triton without its NVIDIA backend")
    env = {**os.environ, "TRITON_INTERPRET": "0"}  # compile for real, not interpret
    env.pop("GAE_TRITON_CONFIG", None)
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run(
        [sys.executable, "-c", AOT_SCRIPT], capture_output=True, text=True, env=env, cwd=root, timeout=300
    )
    assert p.returncode == 0, p.stderr[-3000:]
    sizes = json.loads(p.stdout)
    assert set(sizes) == {
        f"{dt}/{d}/{s}" for dt in ("fp32", "fp64") for d in (False, True) for s in ("gather", "affine")
    }
    assert all(n > 0 for n in sizes.values()), sizes  # compiled, and nothing spilled

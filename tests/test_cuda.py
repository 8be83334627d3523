"""The GPU path (issue 8): the Triton GAE against the float64 reference on every case the CPU
tests cover, `compute_gae` picking Triton on CUDA, rollouts, scoring and the PPO update
keeping their tensors on the device, bf16 autocast, and `bench/gpu.py`.

Tests marked `cuda` are skipped with a reason on machines without a GPU (tests/conftest.py).
The unmarked ones run everywhere: the Triton kernel on a long row (through the interpreter
on CPU, `TRITON_INTERPRET=1`), the device-to-host copy counter of bench/gpu.py, its
one-line refusal without CUDA, and its `--cpu-dry-run` end to end.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gae.advantages import AdvantageInputError, _pick_backend, compute_gae, gae_reference, raise_pending
from gae.kernels import triton_available

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed (gaeflow[gpu])")
TEXT = (
    "The river ran past the mill and the miller counted the sacks. He was a careful man. "
    "Every evening he wrote the numbers in a book, and every morning he read them again. "
)


def batch(B, T, *, seed, contiguous=False, dtype=torch.float64):
    """Random rows on CPU in float64: contiguous masks (a prefix per row, empty rows
    included) or scattered ones; rewards only on action tokens."""
    g = torch.Generator().manual_seed(seed)
    if contiguous:
        lengths = torch.randint(0, T + 1, (B,), generator=g)
        mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    else:
        mask = torch.rand(B, T, generator=g) < 0.7
    rewards = torch.where(mask, torch.randn(B, T, generator=g, dtype=dtype), torch.zeros((), dtype=dtype))
    values = torch.randn(B, T, generator=g, dtype=dtype)
    last_value = torch.randn(B, generator=g, dtype=dtype)
    return rewards, values, mask, last_value


def triton_on(device, r, v, m, lv, **kw):
    out = compute_gae(
        r.to(device), v.to(device), m.to(device), last_value=lv.to(device), backend="triton", **kw
    )
    return tuple(x.cpu() for x in out)


# --------------------------------------------------------------------------- runs everywhere


@needs_triton
def test_triton_long_row_chunk_carries():
    # T = 5000 is 79 chunks of 64 under the interpreter (3 of 2048 on a GPU): the state at
    # each chunk's first position must carry into the chunk before it, through chunks with
    # no action at all (row 1, t in [1000, 3000): observation tokens), with a bootstrap
    # value and NaN in every padding value (never read: results match the reference, which
    # never reads them either).
    device = "cuda" if HAS_CUDA else "cpu"
    T = 5000
    r, v, m, lv = batch(2, T, seed=7)
    t = torch.arange(T)
    m[1] = (t < 1000) | ((t >= 3000) & (t < T - 10))
    r = torch.where(m, r, 0.0)
    v = torch.where(m, v, torch.tensor(float("nan"), dtype=v.dtype))
    ea, er = gae_reference(r, v, m, gamma=0.999, lam=0.97, last_value=lv)
    adv, ret = triton_on(device, r.float(), v.float(), m, lv.float(), gamma=0.999, lam=0.97)
    # float32 over ~3500 steps of a sum with weights near 1: errors grow with the row length.
    torch.testing.assert_close(adv.double(), ea, rtol=1e-4, atol=2e-3)
    torch.testing.assert_close(ret.double(), er, rtol=1e-4, atol=2e-3)
    assert bool((adv[~m] == 0).all()) and bool((ret[~m] == 0).all())
    # row 1 between its two spans: t = 999 sees the first action of the second span (t = 3000)
    # as its next step, with no discount for the 2000 observation tokens in between.
    gl = 0.999 * 0.97
    delta_999 = r[1, 999] + 0.999 * v[1, 3000] - v[1, 999]
    assert float(ea[1, 999]) == pytest.approx(float(delta_999 + gl * ea[1, 3000]), rel=1e-12)
    assert float(adv[1, 999]) == pytest.approx(float(ea[1, 999]), rel=1e-4, abs=2e-3)


# Compiles the kernel for an H100 (sm_90) with Triton's bundled NVIDIA toolchain, no GPU
# needed, typed as Triton's launcher types `gae_triton`'s arguments (bench/gae_sass.py), and
# reads each cubin's registers, spills and loads.
AOT_SCRIPT = """
import json, sys
from bench.gae_sass import compile_sm90
from gae.kernels.triton_gae import launch_config

out = {}
for dt, T, decoupled in (("fp32", 4096, False), ("fp32", 4096, True), ("fp64", 32768, False), ("fp32", 1, False)):
    key = f"{dt}/{T}" + ("/decoupled" if decoupled else "")
    out[key] = compile_sm90(dt, T, launch_config(T), decoupled=decoupled)
json.dump(out, sys.stdout)
"""


@pytest.fixture(scope="module")
def aot_h100():
    pytest.importorskip("triton.backends.nvidia", reason="triton without its NVIDIA backend")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}  # compile for real
    env.pop("GAE_TRITON_CONFIG", None)
    p = subprocess.run(
        [sys.executable, "-c", AOT_SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


@needs_triton
def test_triton_kernel_compiles_for_h100(aot_h100):
    # float32 at T = 4096, decoupled with per-row lambdas, float64 at T = 32768, and T = 1,
    # which Triton turns into a compile-time constant: each lowers to an sm_90 cubin.
    assert set(aot_h100) == {"fp32/4096", "fp32/4096/decoupled", "fp64/32768", "fp32/1"}
    assert all(k["cubin"] > 0 for k in aot_h100.values())


@needs_triton
def test_float64_kernel_has_no_fp32_argument(aot_h100):
    assert not aot_h100["fp64/32768"]["f32_argument"]


@needs_triton
def test_default_launch_keeps_a_1024_row_batch_resident_without_spills(aot_h100):
    # Issue 14: the kernel shipped with issue 8 used 196 registers a thread (BLOCK 2048, 4
    # warps): 2 programs an SM, so 1024 rows took 4 waves over an H100/H200's 132 SMs. The
    # default launch must fit 8 programs of 4 warps in an SM's 65,536 registers (<= 64 a
    # thread): every row of a 1024 x 4096 batch resident at once, in one wave. And the loads
    # of r, v and the mask vectorise (128-bit), which a load masked by the action mask did not.
    k = aot_h100["fp32/4096"]
    assert k["registers"] is not None, "cuobjdump printed no resource usage"
    assert k["spilled"] == 0
    assert k["programs_per_sm"] >= 8 and k["waves"] == 1, k
    assert k["vector_loads"]
    assert aot_h100["fp32/4096/decoupled"]["spilled"] == 0


def test_dtoh_counter_reads_kineto_memcpy_events():
    # The event shapes Kineto writes to a Chrome trace: only device-to-host copies count,
    # with their byte sizes; kernels, host-to-device and device-to-device copies do not.
    from bench.gpu import dtoh_sizes

    events = [
        {"cat": "kernel", "name": "_gae_kernel", "args": {}},
        {"cat": "gpu_memcpy", "name": "Memcpy DtoH (Device -> Pageable)", "args": {"bytes": 4096}},
        {"cat": "gpu_memcpy", "name": "Memcpy DtoH (Device -> Pinned)", "args": {"bytes": 12}},
        {"cat": "gpu_memcpy", "name": "Memcpy HtoD (Pageable -> Device)", "args": {"bytes": 999}},
        {"cat": "gpu_memcpy", "name": "Memcpy DtoD (Device -> Device)", "args": {"bytes": 7}},
        {"cat": "cuda_runtime", "name": "cudaMemcpyAsync", "args": {}},
    ]
    assert dtoh_sizes(events) == [4096, 12]
    assert dtoh_sizes([]) == []


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal on a machine without CUDA")
def test_bench_gpu_without_cuda_exits_2_with_one_line():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py")], capture_output=True, text=True, env=env, timeout=120
    )
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], p.stderr


@pytest.mark.slow
@needs_triton
def test_bench_gpu_cpu_dry_run(tmp_path):
    # Every section on CPU at tiny sizes (about a minute on 2 cores, most of it the flow:
    # a temporary Prefect server, ingest, pretraining, two iterations).
    out = tmp_path / "gpu.md"
    env = {**os.environ, "GAE_DATA_DIR": str(tmp_path / "unused")}
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--cpu-dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    text = out.read_text()
    for heading in (
        "Copy bandwidth",
        "GAE, float32",
        "Rollout generation",
        "by stage",
        "Pipeline: smoke",
        "Real model: 0.5B Qwen2 shape",
    ):
        assert heading in text, heading
    # section 6 ran every decode method and both PPO variants (none failed, none skipped)
    assert "FAILED" not in text and "skipped" not in text
    assert "| 4 | 6-12 | 8 |" in text and "| 8 | 6-12 | 8 |" in text
    assert "| one pass (chunk_tokens=0) |" in text and "| chunked |" in text
    assert "CPU dry run" in text
    assert "| triton |" in text  # the dry run times the Triton kernel (interpreted), not numba
    assert "`timing_s/step`" in text and "`timing_s/gen`" in text and "`timing_s/update`" in text
    assert not (tmp_path / "mlruns").exists()


# --------------------------------------------------------------------------- CUDA only

GAMMA_LAM = [(0.0, 0.0), (0.5, 1.0), (0.95, 0.9), (1.0, 1.0), (1.0, 0.0)]


@pytest.mark.cuda
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (7, 1), (6, 33), (4, 130), (3, 2049), (64, 4096)])
def test_triton_matches_reference(shape, contiguous):
    # float32 (what the pipeline runs): the first rows against the float64 reference, every
    # row against the torch loop on the device.
    B, T = shape
    tol = 2e-4 * max(1.0, T / 1000)
    for i, (gamma, lam) in enumerate(GAMMA_LAM):
        r, v, m, lv = batch(B, T, seed=B * 1000 + T + i, contiguous=contiguous)
        rows = slice(0, min(B, 8))  # the Python reference is slow: check the first rows
        ea, er = gae_reference(r[rows], v[rows], m[rows], gamma=gamma, lam=lam, last_value=lv[rows])
        r32, v32, lv32 = r.float(), v.float(), lv.float()
        adv, ret = triton_on("cuda", r32, v32, m, lv32, gamma=gamma, lam=lam)
        assert adv.dtype == torch.float32
        torch.testing.assert_close(adv[rows].double(), ea, rtol=tol, atol=tol)
        torch.testing.assert_close(ret[rows].double(), er, rtol=tol, atol=tol)
        assert bool((adv[~m] == 0).all()) and bool((ret[~m] == 0).all())
        ta, tr = compute_gae(
            r32.cuda(), v32.cuda(), m.cuda(), gamma=gamma, lam=lam, last_value=lv32.cuda(), backend="torch"
        )
        torch.testing.assert_close(adv, ta.cpu(), rtol=tol, atol=tol)
        torch.testing.assert_close(ret, tr.cpu(), rtol=tol, atol=tol)


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(6, 33), (4, 130), (2, 8192), (2, 32768)])
def test_triton_float64_matches_reference(shape):
    # float64 to 1e-10, as the CPU tests require of every backend. Triton specialises a bare
    # Python float argument as fp32 (`triton.runtime.jit.mangle_type(0.95) == "fp32"`), which
    # would round gamma = 0.95 to 0.949999988 and move float64 advantages by ~1e-6; the
    # kernel's scalars are annotated `tl.float64` (honoured since Triton 3.4) and rounded to
    # the inputs' dtype inside, as the CPU kernels round a Python float.
    B, T = shape
    r, v, m, lv = batch(B, T, seed=T)
    t = torch.arange(T)
    m[-1] = (t % 5000 < 3000) & (t < T - 3)  # observation spans across chunk boundaries
    r = torch.where(m, r, 0.0)
    for gamma, lam in ((0.95, 0.9), (0.999, 0.95)):
        ea, er = gae_reference(r, v, m, gamma=gamma, lam=lam, last_value=lv)
        adv, ret = triton_on("cuda", r, v, m, lv, gamma=gamma, lam=lam)
        assert adv.dtype == torch.float64
        err = float((adv - ea).abs().max())
        assert err <= 1e-10, (
            f"float64 Triton GAE off by {err:.2e} at gamma={gamma}, lam={lam}: gamma reaching "
            "the kernel as fp32? (see this test's comment)"
        )
        torch.testing.assert_close(ret, er, rtol=1e-10, atol=1e-10)


@pytest.mark.cuda
@pytest.mark.parametrize("T", [8192, 32768])
def test_triton_long_rows_on_gpu(T):
    # Up to 32k positions (16 chunks of 2048) in float32: observation spans, bootstrap.
    r, v, m, lv = batch(2, T, seed=T, dtype=torch.float32)
    t = torch.arange(T)
    m[1] = (t % 5000 < 3000) & (t < T - 3)
    r = torch.where(m, r, 0.0)
    ea, er = gae_reference(r.double(), v.double(), m, gamma=0.999, lam=0.95, last_value=lv.double())
    adv, ret = triton_on("cuda", r, v, m, lv, gamma=0.999, lam=0.95)
    torch.testing.assert_close(adv.double(), ea, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(ret.double(), er, rtol=1e-4, atol=1e-3)
    assert bool((adv[~m] == 0).all())


@pytest.mark.cuda
def test_triton_padding_garbage_bit_identical_and_non_contiguous():
    r, v, m, lv = batch(8, 300, seed=11, dtype=torch.float32)
    a1, r1 = triton_on("cuda", r, v, m, lv, gamma=0.99, lam=0.95)
    garbage = torch.where(m, v, torch.tensor(float("nan")))
    garbage[0, ~m[0]] = float("inf")
    garbage[1, ~m[1]] = 3e38
    a2, r2 = triton_on("cuda", r, garbage, m, lv, gamma=0.99, lam=0.95)
    assert torch.equal(a1, a2) and torch.equal(r1, r2)
    # strided views (every other column, transposed storage) give the same bits
    big_r = torch.zeros(8, 600, device="cuda")
    big_r[:, ::2] = r.cuda()
    big_v = torch.randn(600, 8, device="cuda").t()
    big_v[:, ::2] = v.cuda()
    big_m = torch.zeros(8, 600, dtype=torch.bool, device="cuda")
    big_m[:, ::2] = m.cuda()
    a3, r3 = compute_gae(
        big_r[:, ::2],
        big_v[:, ::2],
        big_m[:, ::2],
        gamma=0.99,
        lam=0.95,
        last_value=lv.cuda(),
        backend="triton",
    )
    assert torch.equal(a3.cpu(), a1) and torch.equal(r3.cpu(), r1)


@pytest.mark.cuda
def test_triton_empty_rows_and_empty_batch():
    r, v, m, lv = batch(5, 20, seed=3, dtype=torch.float32)
    m[1] = False
    m[3] = False
    r = torch.where(m, r, 0.0)
    adv, ret = triton_on("cuda", r, v, m, lv, gamma=0.9, lam=0.9)
    assert bool((adv[[1, 3]] == 0).all()) and bool((ret[[1, 3]] == 0).all())
    z = torch.zeros(0, 5, device="cuda")
    ea, er = compute_gae(z, z, z.bool(), gamma=1, lam=1, backend="triton")
    assert ea.shape == (0, 5) and ea.device.type == "cuda"


@pytest.mark.cuda
def test_hand_computed_on_gpu():
    # Actions at t = 0 and t = 3 (t = 1, 2 are tool output), gamma = 1, lam = 1, last_value = 10.
    # delta_3 = 2 + 1*10 - 3 = 9 -> A_3 = 9;  delta_0 = 0 + 1*3 - 1 = 2 -> A_0 = 2 + 9 = 11.
    r = torch.tensor([[0.0, 0.0, 0.0, 2.0]], device="cuda")
    v = torch.tensor([[1.0, -50.0, 77.0, 3.0]], device="cuda")
    m = torch.tensor([[1, 0, 0, 1]], device="cuda")
    adv, ret = compute_gae(r, v, m, gamma=1.0, lam=1.0, last_value=torch.tensor([10.0], device="cuda"))
    assert adv.device.type == "cuda"
    assert adv.tolist() == [[11.0, 0.0, 0.0, 9.0]] and ret.tolist() == [[12.0, 0.0, 0.0, 12.0]]


@pytest.mark.cuda
@pytest.mark.parametrize(
    ("where", "tensor", "bad", "expected"),
    [
        ((1, 4), "values", float("nan"), r"values\[1, 4\]"),
        ((4, 0), "rewards", float("inf"), r"rewards\[4, 0\]"),
        ((2, 2999), "values", float("-inf"), r"values\[2, 2999\]"),  # last position, second chunk
    ],
)
@pytest.mark.parametrize("check", ["eager", "deferred"])
def test_triton_errors_name_first_bad_position(where, tensor, bad, expected, check):
    r, v, m, _ = batch(5, 3000, seed=0, dtype=torch.float32)
    m[:] = True
    x = {"rewards": r, "values": v}[tensor]
    x[where] = bad
    if where[0] < 3:
        v[3, 1] = float("nan")  # a later bad row is not the one reported
    with pytest.raises(AdvantageInputError, match=expected):
        compute_gae(r.cuda(), v.cuda(), m.cuda(), gamma=1.0, lam=1.0, backend="triton", check=check)
        raise_pending()  # deferred: raised here, eager: never reached


@pytest.mark.cuda
@pytest.mark.parametrize("check", ["eager", "deferred"])
def test_triton_stray_reward_and_last_value_errors(check):
    r, v, m, lv = batch(3, 8, seed=0, dtype=torch.float32)
    m[:, 5:] = False
    r[:, 5:] = 0.0
    r[2, 7] = 1e-45  # the smallest float32 subnormal is not zero
    with pytest.raises(AdvantageInputError, match=r"rewards\[2, 7\] = 1.4.*non-action"):
        compute_gae(r.cuda(), v.cuda(), m.cuda(), gamma=1.0, lam=1.0, backend="triton", check=check)
        raise_pending()
    r[2, 7] = 0.0
    lv[1] = float("nan")
    with pytest.raises(AdvantageInputError, match=r"last_value\[1\] is nan"):
        compute_gae(
            r.cuda(),
            v.cuda(),
            m.cuda(),
            gamma=1.0,
            lam=1.0,
            last_value=lv.cuda(),
            backend="triton",
            check=check,
        )
        raise_pending()


GOOD_CALLS = {
    "scalar lambda, terminal": {"lam": 0.95},
    "bootstrap": {"lam": 0.95, "last_value": "lv"},
    "decoupled": {"lam": 0.95, "lam_critic": 1.0},
    "per-row lambdas": {"lam": "lam_rows", "lam_critic": "lam_rows", "last_value": "lv"},
}


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_deferred_checks_make_no_host_sync(backend):
    # Issue 14: with the default (deferred) checks, compute_gae on CUDA never waits for the
    # device. torch's sync debug mode raises on any synchronising call (a read-back, a
    # blocking copy, a stream or device sync); eager checks trip it, which shows it watches.
    r, v, m, lv = (x.cuda() for x in batch(16, 700, seed=2, dtype=torch.float32))
    named = {"lv": lv, "lam_rows": torch.rand(16, device="cuda", dtype=torch.float64)}
    calls = [
        {k: named.get(x, x) if isinstance(x, str) else x for k, x in kw.items()} for kw in GOOD_CALLS.values()
    ]
    for kw in calls:  # compile and warm the caching allocators first
        compute_gae(r, v, m, gamma=0.99, backend=backend, **kw)
    raise_pending()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for kw in calls:
            compute_gae(r, v, m, gamma=0.99, backend=backend, **kw)
        with pytest.raises(RuntimeError, match="synchroniz"):
            compute_gae(r, v, m, gamma=0.99, lam=0.95, backend=backend, check="eager")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    raise_pending()  # all good


@pytest.mark.cuda
def test_deferred_error_comes_at_the_next_host_copy_on_the_gpu():
    from gae import deferred
    from gae.device import to_host

    r, v, m, lv = batch(6, 3000, seed=4, dtype=torch.float32)
    m[:] = True
    v[4, 2500] = float("nan")
    eager = None
    try:
        compute_gae(r, v, m, gamma=0.99, lam=0.95, last_value=lv, backend="numba")
    except AdvantageInputError as e:
        eager = str(e)
    assert eager and eager.startswith("values[4, 2500] is nan")
    adv, ret = compute_gae(r.cuda(), v.cuda(), m.cuda(), gamma=0.99, lam=0.95, last_value=lv.cuda())
    assert adv.is_cuda and deferred.pending() == 1  # returned without waiting
    with pytest.raises(AdvantageInputError) as e:
        to_host({"advantages": adv, "returns": ret}).wait()
    assert str(e.value).startswith(eager) and deferred.pending() == 0
    # a later call finds a finished failed check without waiting for it
    compute_gae(r.cuda(), v.cuda(), m.cuda(), gamma=0.99, lam=0.95, last_value=lv.cuda())
    torch.cuda.synchronize()
    m[4, 2500] = False  # good input now: the NaN value and the reward there are gone
    v[4, 2500] = r[4, 2500] = 0.0
    with pytest.raises(AdvantageInputError, match=r"values\[4, 2500\] is nan"):
        compute_gae(r.cuda(), v.cuda(), m.cuda(), gamma=0.99, lam=0.95, last_value=lv.cuda())
    raise_pending()


@pytest.mark.cuda
def test_deferred_records_of_many_rows_are_reduced_on_the_device():
    # past gae.deferred.COPY_ROWS rows the records are reduced before their copy to the host
    from gae import deferred

    B = deferred.COPY_ROWS + 904
    r, v, m, lv = (x.cuda() for x in batch(B, 8, seed=7, dtype=torch.float32))
    m[4321, 5], v[4321, 5] = True, float("nan")
    m[4500, 0], r[4500, 0] = True, float("inf")
    compute_gae(r, v, m, gamma=0.99, lam=0.95, last_value=lv)
    assert deferred._queue()[-1].host.shape == (1, 2)
    with pytest.raises(AdvantageInputError, match=r"^values\[4321, 5\] is nan"):
        raise_pending()


@pytest.mark.cuda
def test_graph_capture_takes_check_off_and_refuses_checks():
    r, v, m, lv = (x.cuda() for x in batch(8, 600, seed=6, dtype=torch.float32))
    want = compute_gae(r, v, m, gamma=0.99, lam=0.95, last_value=lv, check="eager")
    compute_gae(r, v, m, gamma=0.99, lam=0.95, last_value=lv, check="off")  # compiled outside
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        adv, ret = compute_gae(r, v, m, gamma=0.99, lam=0.95, last_value=lv, check="off")
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(adv, want[0]) and torch.equal(ret, want[1])
    with pytest.raises(AdvantageInputError, match="CUDA graph capture.*check='off'"):  # noqa: SIM117
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            compute_gae(r, v, m, gamma=0.99, lam=0.95, last_value=lv)


@pytest.mark.cuda
@pytest.mark.parametrize("scan", ["gather", "affine"])
def test_gpu_check_records_equal_the_torch_record(scan):
    from gae.advantage_inputs import record_torch, reduce_records
    from gae.kernels.triton_gae import gae_triton, launch_config

    g = torch.Generator().manual_seed(5)
    for trial in range(20):
        r, v, m, lv = batch(8, 2100, seed=100 + trial, dtype=torch.float32)
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            b, t = int(torch.randint(0, 8, (1,), generator=g)), int(torch.randint(0, 2100, (1,), generator=g))
            kind = int(torch.randint(0, 4, (1,), generator=g))
            if kind == 0:
                m[b, t], r[b, t] = True, float("nan")
            elif kind == 1:
                m[b, t], v[b, t] = True, float("-inf")
            elif kind == 2:
                m[b, t], r[b, t] = False, 1e-45
            else:
                lv[b] = float("inf")
        r, v, m, lv = r.cuda(), v.cuda(), m.cuda(), lv.cuda()
        _, _, rec = gae_triton(r, v, m, lv, 0.99, 0.95, config=launch_config(2100, scan=scan))
        assert torch.equal(reduce_records(rec), record_torch(r, v, m, lv)), trial


@pytest.mark.cuda
def test_every_benchmarked_launch_config_matches_the_reference():
    # bench/gpu.py times these launches to pick the default: each must compute GAE
    from bench.gpu import LAUNCH_GRID
    from gae.kernels.triton_gae import gae_triton, launch_config

    for T in (1000, 4096):
        r, v, m, lv = batch(6, T, seed=T)
        ea, er = gae_reference(r, v, m, gamma=0.99, lam=0.95, last_value=lv)
        lam_c = torch.full((6,), 1.0, dtype=torch.float64, device="cuda")
        ec = gae_reference(r, v, m, gamma=0.99, lam=0.95, lam_critic=1.0, last_value=lv)[1]
        for cfg in LAUNCH_GRID:
            config = launch_config(T, **cfg)
            adv, ret, rec = gae_triton(
                r.float().cuda(), v.float().cuda(), m.cuda(), lv.float().cuda(), 0.99, 0.95, config=config
            )
            torch.testing.assert_close(adv.double().cpu(), ea, rtol=1e-3, atol=2e-3, msg=str(config))
            torch.testing.assert_close(ret.double().cpu(), er, rtol=1e-3, atol=2e-3, msg=str(config))
            assert bool((rec[:, 0] == 2**63 - 1).all())
            _, ret2, _ = gae_triton(
                r.cuda(), v.cuda(), m.cuda(), lv.cuda(), 0.99, 0.95, lam_critic=lam_c, config=config
            )
            torch.testing.assert_close(ret2.cpu(), ec, rtol=1e-10, atol=1e-10, msg=str(config))


@pytest.mark.cuda
def test_compute_gae_picks_triton_on_cuda_without_bt_host_copies():
    from torch.profiler import ProfilerActivity, profile

    from bench.gpu import dtoh_sizes

    assert triton_available(), "CUDA machines need the gpu extra: pip install -e '.[gpu]'"
    assert _pick_backend(torch.device("cuda"), "auto") == "triton"
    r, v, m, lv = (x.cuda() for x in batch(64, 512, seed=1, dtype=torch.float32))
    auto = compute_gae(r, v, m, gamma=0.99, lam=0.95, last_value=lv)
    named = compute_gae(r, v, m, gamma=0.99, lam=0.95, last_value=lv, backend="triton")
    assert torch.equal(auto[0], named[0]) and torch.equal(auto[1], named[1])
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        compute_gae(r, v, m, gamma=0.99, lam=0.95, last_value=lv)
        torch.cuda.synchronize()
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"gae-trace-{os.getpid()}.json"
    prof.export_chrome_trace(str(path))

    sizes = dtoh_sizes(json.loads(path.read_text())["traceEvents"])
    path.unlink()
    # Only the (B, 2) check records come back (16 bytes a row, into pinned memory, without
    # waiting): never a (B, T) tensor.
    assert sizes == [64 * 16], sizes
    raise_pending()


def _tiny_setup(tmp_path, device):
    from gae.models import ModelConfig, build_model
    from gae.tokenizer import load_tokenizer, train_tokenizer

    tok = load_tokenizer(train_tokenizer([TEXT] * 20, vocab_size=300, out_dir=tmp_path / "tok"))
    torch.manual_seed(0)
    policy = build_model(ModelConfig.preset("tiny"), len(tok)).to(device)
    ref = build_model(ModelConfig.preset("tiny"), len(tok)).to(device)
    ref.load_state_dict(policy.state_dict())
    prompts = [
        {"prompt_id": f"p{i}", "prompt": TEXT[i * 9 : i * 9 + 30], "reference": TEXT[:40]} for i in range(4)
    ]
    return tok, policy, ref, prompts


@pytest.mark.cuda
@pytest.mark.parametrize("bf16", [False, True])
def test_iteration_stays_on_the_device(tmp_path, bf16):
    from gae.batch import TENSOR_FIELDS
    from gae.models import score_responses
    from gae.rewards import RewardConfig, score_batch
    from gae.rollout import RolloutConfig, generate_rollouts
    from gae.shaping import ShapingConfig, shape_rewards
    from gae.train import PPOConfig, build_optimizer, ppo_update

    dev = torch.device("cuda")
    tok, policy, ref, prompts = _tiny_setup(tmp_path, dev)
    b = generate_rollouts(
        policy, ref, tok, prompts, RolloutConfig(n_samples=2, max_new_tokens=12, bf16=bf16), device=dev
    )
    for name in TENSOR_FIELDS:
        assert getattr(b, name).device.type == "cuda", name
    for name in ("logprobs", "ref_logprobs", "values", "last_values"):
        x = getattr(b, name)
        assert x.dtype == torch.float32, name  # the store gets float32 with or without bf16
        assert bool(torch.isfinite(x).all()), name
    policy.eval()  # the rollout scored with dropout off
    with torch.no_grad():
        out = score_responses(policy, b.prompt_tokens, b.prompt_mask, b.response_tokens, b.action_mask)
    policy.train()
    assert out.logprobs.device.type == "cuda" and out.values.device.type == "cuda"
    if not bf16:  # the stored log-probs are score_responses' own: ratio exactly 1
        torch.testing.assert_close(out.logprobs.float(), b.logprobs)
    scores = score_batch(b, RewardConfig())
    rewards, kl = shape_rewards(scores.total.to(dev), b, ShapingConfig(), 0.05)
    assert rewards.device.type == "cuda" and kl.device.type == "cuda"
    adv, ret = compute_gae(rewards, b.values, b.action_mask.bool(), gamma=1.0, lam=0.95)
    assert adv.device.type == "cuda"
    opt = build_optimizer(policy, PPOConfig())
    before = [p.detach().clone() for p in policy.parameters()]
    metrics, train_lp = ppo_update(policy, opt, b, adv, ret, PPOConfig(epochs=1, minibatches=2))
    assert all(p.device.type == "cuda" for p in policy.parameters())
    assert any(not torch.equal(p0, p) for p0, p in zip(before, policy.parameters(), strict=True))
    assert metrics["actor/update_steps"] >= 1
    # train_logprobs stay on the device: the task copies them once, for the store.
    assert train_lp.device.type == "cuda" and train_lp.shape == b.action_mask.shape


@pytest.mark.cuda
def test_task_chain_copies_each_bt_tensor_to_the_host_once(tmp_path):
    """rollout -> rewards -> advantages -> PPO through the task functions on CUDA: the
    profiler's device-to-host copies of (B, T) size match the ledger (one per tensor), and
    the trainer gets the rollout's device tensors back from the handoff, not from the file."""
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    from bench.gpu import dtoh_sizes
    from gae import handoff
    from gae.batch import RolloutBatch
    from gae.device import host_copy_log
    from gae.models import save_model
    from tests.test_handoff import STORE_COPIES, task_chain

    tok, policy, _, prompts = _tiny_setup(tmp_path, "cpu")
    save_model(policy, tmp_path / "policy")
    tok.save(tmp_path / "policy")
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    args = (
        str(tmp_path / "policy"),
        str(tmp_path / "policy" / "tokenizer.json"),
        str(tmp_path / "prompts.jsonl"),
    )
    handoff.clear()
    task_chain(tmp_path, *args, "warm", "cuda")  # compiles the Triton kernel, primes the allocator
    torch.cuda.synchronize()
    with host_copy_log() as log, profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        batch_dir = task_chain(tmp_path, *args, "b", "cuda")
        torch.cuda.synchronize()
    trace = tmp_path / "trace.json"
    prof.export_chrome_trace(str(trace))
    sizes = dtoh_sizes(json.loads(trace.read_text())["traceEvents"])
    B, T = RolloutBatch.load(batch_dir).action_mask.shape
    logged = [e for e in log if e["shape"] == (B, T)]
    assert Counter(e["name"] for e in logged) == Counter(STORE_COPIES)
    assert all(e["device"] == "cuda" for e in logged)
    # The profiler's copies of a (B, T) tensor's size (bool 1, float32 4, int64 8 bytes an
    # element) are the ledger's, plus only copies of a parameter's size (the checkpoint saves
    # the weights and the optimizer moments, which the trainer must).
    bt_sizes = {B * T, 4 * B * T, 8 * B * T}
    seen = Counter(s for s in sizes if s in bt_sizes)
    want = Counter(e["bytes"] for e in logged)
    assert not want - seen, (want, seen)  # every logged copy happened
    params = {p.numel() * p.element_size() for p in policy.parameters()}
    assert all(s in params for s in seen - want), (seen - want, params)
    cached = handoff.get(f"{batch_dir}/batch.safetensors", "cuda")
    assert cached is not None and cached["values"].device.type == "cuda"
    handoff.clear()


@pytest.mark.cuda
def test_bf16_autocast_on_cuda_only():
    from gae.device import autocast

    lin = torch.nn.Linear(16, 16).cuda()
    x = torch.randn(4, 16, device="cuda")
    with autocast(torch.device("cuda"), bf16=True):
        assert lin(x).dtype == torch.bfloat16
    with autocast(torch.device("cuda"), bf16=False):
        assert lin(x).dtype == torch.float32
    with autocast(torch.device("cpu"), bf16=True):  # a no-op on CPU by design
        assert lin.cpu()(x.cpu()).dtype == torch.float32


@pytest.mark.cuda
def test_ppo_update_in_bf16_on_cuda(tmp_path):
    """ppo.bf16: the update's forward passes run in bf16 (seen by a hook on the LM head), the
    losses and the returned log-probs stay float32 and finite, and the policy moves."""
    from gae.rewards import RewardConfig, score_batch
    from gae.rollout import RolloutConfig, generate_rollouts
    from gae.shaping import ShapingConfig, shape_rewards
    from gae.train import PPOConfig, build_optimizer, ppo_update

    dev = torch.device("cuda")
    tok, policy, ref, prompts = _tiny_setup(tmp_path, dev)
    b = generate_rollouts(policy, ref, tok, prompts, RolloutConfig(n_samples=2, bf16=True), device=dev)
    rewards, _ = shape_rewards(score_batch(b, RewardConfig()).total.to(dev), b, ShapingConfig(), 0.05)
    adv, ret = compute_gae(rewards, b.values, b.action_mask.bool(), gamma=1.0, lam=0.95)
    seen = []
    head = next(m for m in policy.modules() if isinstance(m, torch.nn.Linear))
    hook = head.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    cfg = PPOConfig(epochs=1, minibatches=2, bf16=True, micro_batch_rows=3)
    before = [p.detach().clone() for p in policy.parameters()]
    metrics, lp = ppo_update(policy, build_optimizer(policy, cfg), b, adv, ret, cfg)
    hook.remove()
    assert torch.bfloat16 in seen
    assert lp.dtype == torch.float32 and bool(torch.isfinite(lp).all())
    assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
    assert any(not torch.equal(p0, p) for p0, p in zip(before, policy.parameters(), strict=True))


@pytest.mark.cuda
def test_resolve_device_auto_picks_cuda():
    from gae.device import resolve_device

    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cuda").type == "cuda"


def test_report_checks_the_targets_and_shows_failed_sections():
    # The GPU report on made-up figures: 1024 x 4096 at 2.5x the floor and 400x the loop
    # meets both GAE targets; a 0.05 s step is 0.49 / 0.05 = 9.8x the CPU baseline; rollout
    # makes 2 large copies but names only 1 as the store's: the copy target fails.
    from bench.gpu import CPU_SMOKE_STEP_S, CPU_STAGES_S, report

    env = {
        "device_name": "Test GPU",
        "date": "today",
        "command": "python bench/gpu.py",
        "torch": "x",
        "triton": "y",
        "transformers": "z",
        "host": "h",
        "dry_run": False,
    }
    gae = {"B": 1024, "T": 4096, "backend": "triton", "floor_s": 1e-5, "fast_s": 2.5e-5, "loop_s": 1e-2}
    gae.update(fast_vs_floor=2.5, loop_vs_fast=400.0, max_abs_err_vs_float64=1e-6)
    gae.update(kernel_s=1.2e-5, kernel_vs_floor=1.2, kernel_unchecked_s=1.1e-5, back_to_back=20)
    gae.update(deferred_b2b_s=1.5e-5, deferred_b2b_vs_floor=1.5, eager_s=9e-5, eager_vs_floor=9.0)
    gae.update(grid=[{"config": "block=512", "seconds": 1.2e-5}, {"config": "block=1024", "seconds": 1.1e-5}])
    gae.update(best_config="block=1024", best_vs_floor=1.1)
    stage = {"seconds": 0.01, "dtoh_count": 1, "dtoh_bytes": 64, "dtoh_bt_sizes": []}
    stages = {
        "B": 16,
        "T": 16,
        "rows": [
            {**stage, "stage": "rollout", "dtoh_bt": 2, "store_copies": ["response_tokens"]},
            {**stage, "stage": "store copy", "dtoh_bt": 1, "store_copies": ["advantages"]},
        ],
        "on_device": {"advantages": "cuda:0"},
    }
    pipe = {"iterations": 2, "device": "cuda", "wall_s": 30.0, "timing_s": {"timing_s/step": 0.05}}
    text = report(env, {"gae": [gae], "stages": stages, "pipeline": pipe}, {"rollout": "RuntimeError: boom"})
    assert pytest.approx(0.49) == CPU_SMOKE_STEP_S
    assert "| 2.50x | yes |" in text and "| 400x | yes |" in text
    assert "| 1.50x; 9.00x | yes |" in text  # back to back; eager
    assert "| 1.20x (fastest launch 1.10x: `block=1024`) | yes |" in text
    assert "| `block=1024` (fastest) | 11.0 us | 1.10x |" in text
    assert "0.050 s = 9.8x | yes |" in text
    assert "rollout: 2, store copy: 1 (store's: 2) | no |" in text
    # the stages in process: 2 x 0.01 s against the CPU's 0.068 s = 3.4x, short of 5x
    assert pytest.approx(0.068) == CPU_STAGES_S and "0.020 s = 3.4x | no |" in text
    # every large copy named, each tensor once: met; the same tensor copied twice: not met
    stages["rows"][0]["store_copies"] = ["response_tokens", "action_mask"]
    assert "(store's: 3) | yes |" in report(env, {"stages": stages}, {})
    stages["rows"][1]["store_copies"] = ["response_tokens"]
    assert "(store's: 3) | no |" in report(env, {"stages": stages}, {})
    assert "**FAILED**: `RuntimeError: boom`" in text
    assert "# GPU path: Test GPU" in text and "dry run" not in text

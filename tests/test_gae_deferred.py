"""Deferred input checks of `compute_gae` (issue 14), on CPU through the same code path CUDA runs.

The Triton kernel runs here through its interpreter (`TRITON_INTERPRET=1`, tests/conftest.py):
its per-row check records are compared with `record_torch` (the same record from torch ops)
and their message with the eager check's, word for word; then the deferral itself: a
deferred call returns, and the error comes at the next `to_host(...).wait()`, `raise_pending()`
or deferred call. The one thing CPU tensors cannot show, a check still running on the device,
is played by a stand-in for `torch.cuda.Event` (the test says so); tests/test_cuda.py runs
the real events and counts host syncs on a GPU.
"""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch

from gae import deferred
from gae.advantage_inputs import NO_ERROR, error_from_record, record_torch, reduce_records
from gae.advantages import AdvantageInputError, check_mode, compute_gae, gae_reference, raise_pending
from gae.device import to_host
from gae.kernels import triton_available

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed (gaeflow[gpu])")
# 130 positions: three chunks of 64 under the interpreter, so the cold pass that locates a
# row's first bad position crosses chunks as well
B, T = 4, 130


@pytest.fixture(autouse=True)
def nothing_pending(monkeypatch):
    monkeypatch.delenv("GAE_CHECK", raising=False)
    monkeypatch.delenv("GAE_TRITON_CONFIG", raising=False)
    assert deferred.pending() == 0
    yield
    with contextlib.suppress(AdvantageInputError):  # a failing test leaves no check to the next
        raise_pending()


def batch(seed, *, B=B, T=T):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(B, T, generator=g) < 0.6
    r = torch.where(m, torch.randn(B, T, generator=g), torch.zeros(()))
    v = torch.randn(B, T, generator=g)
    lv = torch.randn(B, generator=g)
    return r, v, m, lv


def eager_message(r, v, m, lv, **kw) -> str:
    """What the numba backend (eager, the CPU default) raises for these inputs."""
    with pytest.raises(AdvantageInputError) as e:
        compute_gae(r, v, m, gamma=0.9, lam=kw.pop("lam", 0.8), last_value=lv, backend="numba", **kw)
    return str(e.value)


def spoil(r, v, m, lv, problems):
    for kind, b, t in problems:
        if kind == "nan_reward":
            m[b, t], r[b, t] = True, float("nan")
        elif kind == "inf_value":
            m[b, t], v[b, t] = True, float("inf")
        elif kind == "both":  # reward and value bad at one position: the reward is named
            m[b, t], r[b, t], v[b, t] = True, float("-inf"), float("nan")
        elif kind == "stray":  # the smallest float32 subnormal is not zero
            m[b, t], r[b, t] = False, 1e-45
        elif kind == "last_value":
            lv[b] = float("nan")


PROBLEMS = {
    "value in the last chunk": [("inf_value", 2, 129)],
    "stray reward": [("stray", 1, 70)],
    "first row wins": [("nan_reward", 3, 0), ("inf_value", 1, 100)],
    "reward before value": [("both", 0, 64)],
    "last_value before its row's positions": [("nan_reward", 2, 3), ("last_value", 2, 0)],
    "a row's positions before a later last_value": [("stray", 0, 127), ("last_value", 3, 0)],
}


@needs_triton
@pytest.mark.parametrize("problems", PROBLEMS.values(), ids=PROBLEMS.keys())
def test_kernel_records_name_what_the_eager_check_names(problems):
    from gae.kernels.triton_gae import gae_triton

    r, v, m, lv = batch(len(problems))
    spoil(r, v, m, lv, problems)
    _, _, rec = gae_triton(r, v, m, lv, 0.9, 0.8)
    assert rec.shape == (B, 2) and rec.dtype == torch.int64
    got = reduce_records(rec)
    assert torch.equal(got, record_torch(r, v, m, lv))
    key, bits = got.view(2).tolist()
    assert str(error_from_record(key, bits, B, T)) == eager_message(r, v, m, lv)


@needs_triton
def test_kernel_records_per_row_lambdas_before_any_value():
    from gae.kernels.triton_gae import gae_triton

    r, v, m, lv = batch(7)
    spoil(r, v, m, lv, [("nan_reward", 0, 5)])
    lam = torch.tensor([0.9, 0.5, 1.5, -0.0], dtype=torch.float64)
    lam_c = torch.tensor([float("nan"), 1.0, 1.0, 2.0], dtype=torch.float64)
    _, _, rec = gae_triton(r, v, m, lv, 0.9, lam, lam_critic=lam_c)
    assert torch.equal(reduce_records(rec), record_torch(r, v, m, lv, lam, lam_c))
    key, bits = reduce_records(rec).view(2).tolist()
    assert str(error_from_record(key, bits, B, T)) == eager_message(r, v, m, lv, lam=lam, lam_critic=lam_c)
    assert "lam[2] is 1.5" in str(error_from_record(key, bits, B, T))
    _, _, rec = gae_triton(r, v, m, lv, 0.9, 0.9, lam_critic=lam_c)  # lam_critic is next
    key, bits = reduce_records(rec).view(2).tolist()
    assert str(error_from_record(key, bits, B, T)).startswith("lam_critic[0] is nan")
    clean = torch.full((B,), 0.5, dtype=torch.float64)
    r, v, m, lv = batch(7)
    _, _, rec = gae_triton(r, v, m, lv, 0.9, clean, lam_critic=clean)
    assert bool((rec[:, 0] == NO_ERROR).all())


@needs_triton
def test_deferred_call_returns_and_the_next_host_copy_raises():
    r, v, m, lv = batch(1)
    spoil(r, v, m, lv, [("inf_value", 2, 100)])
    eager = eager_message(r, v, m, lv)
    adv, ret = compute_gae(r, v, m, gamma=0.9, lam=0.8, last_value=lv, backend="triton", check="deferred")
    assert adv.shape == (B, T) and deferred.pending() == 1
    with pytest.raises(AdvantageInputError) as e:
        to_host({"advantages": adv, "returns": ret}).wait()
    assert str(e.value).startswith(eager) and "values[2, 100] is inf" in eager
    assert "deferred input check of compute_gae on a (4, 130) batch" in str(e.value)
    assert deferred.pending() == 0
    to_host({"advantages": adv}).wait()  # raised once, then cleared


@needs_triton
def test_next_deferred_call_raises_an_earlier_finished_check():
    r, v, m, lv = batch(2)
    bad = r.clone()
    spoil(bad, v, m, lv, [("stray", 3, 7)])
    compute_gae(bad, v, m, gamma=0.9, lam=0.8, last_value=lv, backend="triton", check="deferred")
    # CPU records are final when the call returns: the next deferred call finds it finished
    with pytest.raises(AdvantageInputError, match=r"rewards\[3, 7\] = 1.4"):
        compute_gae(r, v, m, gamma=0.9, lam=0.8, last_value=lv, backend="triton", check="deferred")
    compute_gae(r, v, m, gamma=0.9, lam=0.8, last_value=lv, backend="triton", check="deferred")
    raise_pending()  # the good calls' checks pass
    assert deferred.pending() == 0


@needs_triton
def test_deferred_results_are_the_eager_results_bit_for_bit():
    r, v, m, lv = batch(3)
    lam = torch.rand(B, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    calls = {
        "scalar lambda, terminal": {"lam": 0.95},
        "equal per-row lambdas": {"lam": lam, "lam_critic": lam.clone()},
        "bootstrap": {"lam": 0.9, "last_value": lv},
    }
    for backend in ("triton", "torch"):
        for name, kw in calls.items():
            eager = compute_gae(r, v, m, gamma=0.99, backend=backend, check="eager", **kw)
            late = compute_gae(r, v, m, gamma=0.99, backend=backend, check="deferred", **kw)
            assert torch.equal(eager[0], late[0]) and torch.equal(eager[1], late[1]), (backend, name)
            if name == "equal per-row lambdas":
                # eager compares the tensors (a host sync) and takes one accumulator; deferred
                # takes two, with the same bits; both are GAE
                ea, er = gae_reference(r.double(), v.double(), m, gamma=0.99, lam=lam)
                torch.testing.assert_close(late[0].double(), ea, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(late[1].double(), er, atol=1e-5, rtol=1e-5)
    raise_pending()


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_deferred_per_row_lambda_errors(backend):
    r, v, m, lv = batch(4)
    lam = torch.tensor([0.5, 0.9, 1.5, 0.2], dtype=torch.float64)
    compute_gae(r, v, m, gamma=1.0, lam=lam, backend=backend, check="deferred")
    with pytest.raises(AdvantageInputError, match=r"^lam\[2\] is 1.5 \(must be in \[0, 1\]\)"):
        raise_pending()
    lam_c = torch.tensor([float("nan"), 1, 1, 1], dtype=torch.float64)
    compute_gae(r, v, m, gamma=1.0, lam=0.9, lam_critic=lam_c, backend=backend, check="deferred")
    with pytest.raises(AdvantageInputError, match=r"^lam_critic\[0\] is nan"):
        raise_pending()


def test_torch_backend_defers_the_same_message():
    # no interpreter: the torch loop's record comes from `record_torch`
    r, v, m, lv = batch(5)
    spoil(r, v, m, lv, [("both", 1, 33), ("last_value", 2, 0)])
    eager = eager_message(r, v, m, lv)
    compute_gae(r, v, m, gamma=0.9, lam=0.8, last_value=lv, backend="torch", check="deferred")
    with pytest.raises(AdvantageInputError) as e:
        raise_pending()
    assert str(e.value).startswith(eager) and eager.startswith("rewards[1, 33] is -inf")


def test_eager_mode_and_the_environment_switch_raise_at_the_call(monkeypatch):
    r, v, m, lv = batch(6)
    spoil(r, v, m, lv, [("nan_reward", 0, 9)])
    with pytest.raises(AdvantageInputError, match=r"rewards\[0, 9\] is nan"):
        compute_gae(r, v, m, gamma=0.9, lam=0.8, backend="torch", check="eager")
    monkeypatch.setenv("GAE_CHECK", "eager")  # debugging: every call checks at once
    with pytest.raises(AdvantageInputError, match=r"rewards\[0, 9\] is nan"):
        compute_gae(r, v, m, gamma=0.9, lam=0.8, backend="torch", check="deferred")
    assert deferred.pending() == 0
    monkeypatch.setenv("GAE_CHECK", "later")
    with pytest.raises(AdvantageInputError, match="GAE_CHECK must be 'eager' or unset, got 'later'"):
        compute_gae(r, v, m, gamma=0.9, lam=0.8, backend="torch")


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_check_off_neither_raises_nor_records(backend):
    # a stray reward is never read by the recursion: "off" gives the clean input's outputs
    r, v, m, lv = batch(8)
    clean = compute_gae(r, v, m, gamma=0.9, lam=0.8, last_value=lv, backend=backend)
    spoil(r, v, m, lv, [("stray", 1, 50)])
    adv, ret = compute_gae(r, v, m, gamma=0.9, lam=0.8, last_value=lv, backend=backend, check="off")
    assert deferred.pending() == 0
    assert torch.equal(adv, clean[0]) and torch.equal(ret, clean[1])


def test_numba_checks_whatever_the_mode():
    # its checks cost no sync, and its kernel stops at the first bad row: never "off"
    r, v, m, lv = batch(8)
    spoil(r, v, m, lv, [("stray", 1, 50)])
    for check in ("deferred", "off"):
        with pytest.raises(AdvantageInputError, match=r"rewards\[1, 50\]"):
            compute_gae(r, v, m, gamma=0.9, lam=0.8, last_value=lv, backend="numba", check=check)
    assert deferred.pending() == 0


def test_check_mode_follows_device_and_backend(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # device objects: no GPU needed
    assert check_mode("auto", cuda, "triton") == "deferred"
    assert check_mode("auto", cuda, "torch") == "deferred"
    assert check_mode("auto", cpu, "triton") == "eager"
    assert check_mode("deferred", cpu, "triton") == "deferred"
    assert check_mode("off", cuda, "triton") == "off"
    # numba's checks ride in its pass on the host, and the reference is the slow path
    assert check_mode("deferred", cpu, "numba") == "eager"
    assert check_mode("deferred", cpu, "reference") == "eager"
    assert check_mode("off", cpu, "numba") == "eager"
    monkeypatch.setenv("GAE_CHECK", "eager")
    assert check_mode("off", cuda, "triton") == "eager"
    with pytest.raises(AdvantageInputError, match="check must be one of auto, eager, deferred, off"):
        check_mode("lazy", cpu, "torch")


def test_pending_checks_belong_to_the_calling_thread():
    r, v, m, lv = batch(9)
    spoil(r, v, m, lv, [("inf_value", 3, 3)])
    seen: dict = {}

    def worker():
        compute_gae(r, v, m, gamma=0.9, lam=0.8, backend="torch", check="deferred")
        seen["pending"] = deferred.pending()
        try:
            raise_pending()
        except AdvantageInputError as e:
            seen["error"] = str(e)

    compute_gae(r, v, m, gamma=0.9, lam=0.8, backend="torch", check="deferred")
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["pending"] == 1 and "values[3, 3] is inf" in seen["error"]
    assert deferred.pending() == 1  # this thread's own check is still here
    with pytest.raises(AdvantageInputError, match=r"values\[3, 3\]"):
        raise_pending()


class StandInEvent:
    """A stand-in for `torch.cuda.Event`, which needs a GPU: a check still running on the
    device until something waits for it."""

    def __init__(self):
        self.waited = False

    def query(self) -> bool:
        return self.waited

    def synchronize(self) -> None:
        self.waited = True


def _running(key: int, label: str) -> deferred._Pending:
    rec = torch.tensor([[key, 0]], dtype=torch.int64)
    decode = lambda k, bits: None if k == NO_ERROR else AdvantageInputError(f"problem {k}")  # noqa: E731
    return deferred._Pending(rec, StandInEvent(), decode, label)


def test_running_checks_wait_in_call_order_with_a_stand_in_for_cuda_events():
    queue = deferred._queue()
    first, clean, second = _running(5, "call 1"), _running(NO_ERROR, "call 2"), _running(3, "call 3")
    queue += [first, clean, second]
    deferred.poll()  # nothing finished: nothing settled, nothing waited for
    assert deferred.pending() == 3 and not first.event.waited
    with pytest.raises(AdvantageInputError) as e:
        raise_pending()
    # the first failed call in call order (not the smallest key), and how many more failed
    assert str(e.value).startswith("problem 5 [found by a deferred input check of call 1")
    assert str(e.value).endswith("(1 later call(s) failed their checks too)")
    assert deferred.pending() == 0 and second.event.waited


def test_a_full_queue_waits_for_its_oldest_check_with_a_stand_in_for_cuda_events():
    queue = deferred._queue()
    running = [_running(NO_ERROR, f"call {i}") for i in range(deferred.MAX_PENDING)]
    queue += running
    r, v, m, lv = batch(10)
    compute_gae(r, v, m, gamma=0.9, lam=0.8, backend="torch", check="deferred")
    assert running[0].event.waited and not running[1].event.waited
    assert deferred.pending() == deferred.MAX_PENDING
    raise_pending()


@needs_triton
def test_both_scans_match_the_reference(monkeypatch):
    # the launch configuration a GPU run may pick (GAE_TRITON_CONFIG): same numbers either way
    r, v, m, lv = batch(11, B=3)
    r, v, lv = r.double(), v.double(), lv.double()
    lam_c = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    ea, er = gae_reference(r, v, m, gamma=0.97, lam=0.9, lam_critic=lam_c, last_value=lv)
    for scan in ("gather", "affine"):
        monkeypatch.setenv("GAE_TRITON_CONFIG", f"scan={scan},block=32")
        adv, ret = compute_gae(
            r, v, m, gamma=0.97, lam=0.9, lam_critic=lam_c, last_value=lv, backend="triton"
        )
        torch.testing.assert_close(adv, ea, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(ret, er, atol=1e-10, rtol=1e-10)


def test_launch_config_from_the_environment(monkeypatch):
    from gae.kernels.triton_gae import launch_config, parse_config

    assert parse_config("block=1024, warps=8,stages=2,scan=affine") == {
        "block": 1024,
        "warps": 8,
        "stages": 2,
        "scan": "affine",
    }
    monkeypatch.setenv("GAE_TRITON_CONFIG", "warps=2,scan=affine")
    cfg = launch_config(4096, stages=3)
    assert (cfg.warps, cfg.scan, cfg.stages) == (2, "affine", 3)
    for bad, msg in (
        ("block=100", "power of two"),
        ("scan=fast", "gather or affine"),
        ("tile=4", "unknown key"),
    ):
        with pytest.raises(ValueError, match=f"GAE_TRITON_CONFIG: .*{msg}"):
            parse_config(bad)

"""Shared test setup.

Without a GPU, Triton kernels run through Triton's interpreter (TRITON_INTERPRET=1),
which must be set before `triton.jit` decorates them, so it is set here, first.
Services are real and hermetic: Prefect and MLflow keep their state under tmp dirs.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_REGISTER_BLOCKS_ON_START", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="gae-prefect-home-"))

import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
if (os.cpu_count() or 1) <= 2:
    # On a 2-core machine a second intra-op thread makes the small test models slower, and
    # numba's pool would fight it (stack-notes.md).
    torch.set_num_threads(1)
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU; this machine has none")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API for the tests that run flows (one per session, about 10 s to start)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@pytest.fixture(scope="session")
def empty_store(request, tmp_path_factory):
    """An initialised, empty MLflow sqlite file, made once and kept in pytest's cache (keyed
    by the MLflow version): creating the schema costs 2-12 s here, copying it nothing."""
    import shutil

    import mlflow
    from mlflow import MlflowClient

    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    folder = cache.mkdir(f"gae-mlflow-{mlflow.__version__}") if cache else tmp_path_factory.mktemp("mlflow")
    cached = folder / "mlflow.db"
    if not cached.exists():
        tmp = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments()
        shutil.copyfile(tmp, str(cached) + ".part")
        os.replace(str(cached) + ".part", cached)
    return cached


@pytest.fixture(scope="session")
def smoke_run(prefect_api, tmp_path_factory):
    """One real smoke run of `rl-pipeline` (2 iterations, tiny model, about 40 s) whose Parquet
    store, MLflow run and Prefect records several test modules read: run it once per session."""
    import time

    from flows.pipeline import rl_pipeline
    from gae.config import load_config
    from tests.test_pipeline import smoke_overrides, write_corpus

    root = tmp_path_factory.mktemp("smoke-run")
    data_dir = root / "data"
    cfg = load_config(preset="smoke", overrides=smoke_overrides(data_dir, write_corpus(root / "corpus")))
    t0 = time.perf_counter()
    result = rl_pipeline(cfg)
    return {"data_dir": data_dir, "cfg": cfg, "result": result, "wall_s": time.perf_counter() - t0}


@pytest.fixture
def smoke_copy(smoke_run, tmp_path):
    """A copy of the session smoke run's data directory: its corpus ingested and its model
    pretrained, so a run there on the same corpus (`smoke_run["cfg"].corpus`) and model config
    skips both. A run in it must log to an MLflow experiment of its own: the copied store's
    experiment keeps the original's artifact location."""
    import shutil

    data_dir = tmp_path / "smoke-copy"
    shutil.copytree(smoke_run["data_dir"], data_dir)
    return data_dir

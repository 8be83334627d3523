"""Scheduled and UI-triggered runs: a real Prefect server on 127.0.0.1, `gae serve` serving
the deployments, and a run created through the endpoint the UI's Run button calls."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request

import duckdb
import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("prefect server did not become healthy")


async def trigger_and_wait(url: str, name: str, parameters: dict, timeout: float = 180):
    # An explicit client: inside the session's test harness, settings point get_client() elsewhere.
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(url) as client:
        deadline = time.time() + 60
        while True:  # `gae serve` registers the deployments shortly after it starts
            try:
                dep = await client.read_deployment_by_name(name)
                break
            except Exception:
                if time.time() > deadline:
                    raise
                await asyncio.sleep(1)
        # POST /deployments/{id}/create_flow_run: what the UI's Run button sends.
        fr = await client.create_flow_run_from_deployment(dep.id, parameters=parameters)
        deadline = time.time() + timeout
        while time.time() < deadline:
            fr = await client.read_flow_run(fr.id)
            if fr.state is not None and fr.state.is_final():
                return fr
            await asyncio.sleep(1)
        raise TimeoutError(f"flow run {fr.id} of {name} did not finish: {fr.state}")


def test_served_deployment_runs_when_triggered_like_the_ui(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    serve = None
    try:
        wait_healthy(url, server)
        data_dir = tmp_path / "data"
        serve = subprocess.Popen(
            [sys.executable, "-m", "gae.cli", "serve", "--cron", "0 4 * * *", "--data-dir", str(data_dir)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        corpus = tmp_path / "poems.jsonl"
        corpus.write_text(
            '{"text": "床前明月光，疑是地上霜。举头望明月，低头思故乡。"}\n{"text": "The moon is bright tonight."}\n',
            encoding="utf-8",
        )
        fr = asyncio.run(
            trigger_and_wait(
                url, "ingest-corpus/on-demand", {"paths": [str(corpus)], "data_dir": str(data_dir)}
            )
        )
        schedules = asyncio.run(deployment_schedules(url, "rl-pipeline/nightly"))
        assert fr.state.is_completed(), fr.state
        assert schedules == ["0 4 * * *"]
        con = duckdb.connect(str(data_dir / "gae.duckdb"), read_only=True)
        try:
            texts = [r[0] for r in con.sql("select text from documents order by text").fetchall()]
        finally:
            con.close()
        assert "床前明月光，疑是地上霜。举头望明月，低头思故乡。" in texts and len(texts) == 2
    finally:
        for p in (serve, server):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()


async def deployment_schedules(url: str, name: str) -> list[str]:
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(url) as client:
        dep = await client.read_deployment_by_name(name)
        return [s.schedule.cron for s in dep.schedules]


def test_on_demand_ingest_writes_where_the_served_pipeline_reads():
    """`gae serve --data-dir D` with a corpus: the on-demand ingest's default parameters are
    the pipeline's data directory, corpus and ingest options, not ./gae-data."""
    from flows.deployments import build_deployments
    from gae.config import load_config

    cfg = load_config(preset="smoke", values={"data_dir": "/srv/gae", "corpus": ["/srv/texts"]})
    nightly, on_demand = build_deployments(config=cfg.model_dump(mode="json"))
    assert nightly.parameters["config"]["data_dir"] == "/srv/gae"
    assert on_demand.parameters == {
        "paths": ["/srv/texts"],
        "data_dir": "/srv/gae",
        "options": cfg.ingest.model_dump(mode="json"),
    }
    assert not build_deployments(config=None)[1].parameters  # nothing configured: the flow's defaults

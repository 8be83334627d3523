"""`gae serve` and the served deployments as the Prefect UI sees them (issue 17): the run
form's schema (checked with the validator Prefect's server runs for that form), module-path
entrypoints, the writer-lock hint of UI runs, and a real `gae serve` subprocess: its child
server's environment, the links it prints, and how fast and cleanly it stops."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.test_deployments import free_port


def served(preset: str = "smoke", **values):
    from flows.deployments import build_deployments
    from gae.config import load_config

    cfg = load_config(preset=preset, values=values or None)
    return cfg, build_deployments(config=cfg.model_dump(mode="json"))


def properties(schema: dict):
    """(model, field, property) of every field of every model in a parameter schema."""
    for name, prop in schema["properties"].items():
        yield "<parameters>", name, prop
    for model, d in schema.get("definitions", {}).items():
        for name, prop in (d.get("properties") or {}).items():
            yield model, name, prop


def form_errors(values: dict, schema: dict) -> dict:
    """What the Prefect server answers for a run's values (POST /ui/schemas/validate, the
    same check as creating a flow run of a deployment): optional boxes may hold null."""
    from prefect.utilities.schema_tools.validation import build_error_obj, preprocess_schema, validate

    return build_error_obj(validate(values, preprocess_schema(schema), preprocess=False))


def deployment_defaults_ok(values: dict, schema: dict) -> bool:
    """The stricter check the server makes of a deployment's default parameters (plain JSON
    schema: a null in a box without a null branch refuses the deployment)."""
    from prefect._internal.schemas.validators import validate_values_conform_to_schema

    try:
        validate_values_conform_to_schema(values, schema)
    except ValueError:
        return False
    return True


def test_run_form_schema_has_no_none_boxes_and_accepts_its_defaults():
    from gae.config import PipelineConfig
    from gae.rewards import REWARDS

    cfg, (nightly, on_demand) = served(iterations=3)
    schema = nightly._parameter_openapi_schema.model_dump()

    # the model itself, not tabs "PipelineConfig | None" around the whole form
    assert schema["properties"]["config"]["$ref"] == "#/definitions/PipelineConfig"
    for model, name, prop in properties(schema):
        branches = prop.get("anyOf") or []
        nulls = [b for b in branches if b.get("type") == "null"]
        # a None default would select a 'Property is type "None"' tab: those are plain boxes now
        assert not (nulls and prop.get("default", ...) is None), (model, name, prop)
        assert all(b.get("title") == "not set" for b in nulls), (model, name)
        assert "REWARDS" not in (prop.get("description") or ""), (model, name)

    pc = schema["definitions"]["PipelineConfig"]["properties"]
    assert pc["preset"]["enum"] == ["smoke"] and pc["preset"]["readOnly"] is True
    assert "not applied" not in pc["preset"]["description"]
    order = sorted(pc, key=lambda k: pc[k]["position"])
    assert order[:4] == ["run_name", "corpus", "iterations", "prompts_per_iteration"]
    assert all(pc[k]["title"].startswith("Advanced") for k in order[-3:])
    assert pc["ingest"]["description"] == "How corpus files become documents and prompts."
    joiner = schema["definitions"]["IngestConfig"]["properties"]["list_joiner"]
    assert "line break" in joiner["description"]
    names = schema["definitions"]["RewardComponent"]["properties"]["name"]["description"]
    assert all(n in names for n in REWARDS)  # the built-in reward names, spelled out

    # The served defaults pass both server checks and still mean the served config.
    params = nightly.parameters
    assert deployment_defaults_ok(params, schema)
    assert form_errors(params, schema) == {"valid": True, "errors": []}
    assert PipelineConfig.model_validate(params["config"]) == cfg
    assert "horizon" not in params["config"]["advantages"]  # left out: its default is None
    assert all("column" not in c for c in params["config"]["rewards"]["components"])
    # kept in, a null would refuse the deployment; a run's values may hold one (an empty box)
    with_null = json.loads(json.dumps(params))
    with_null["config"]["advantages"]["horizon"] = None
    assert not deployment_defaults_ok(with_null, schema)
    assert form_errors(with_null, schema)["valid"] is True
    with_null["config"]["advantages"]["horizon"] = "soon"  # a wrong type is still caught
    assert form_errors(with_null, schema)["valid"] is False
    # a field left empty in the form is simply absent, and the model's default applies
    sparse = json.loads(json.dumps(nightly.parameters))
    del sparse["config"]["iterations"]
    assert form_errors(sparse, schema)["valid"] is True

    ingest_schema = on_demand._parameter_openapi_schema.model_dump()
    assert deployment_defaults_ok(on_demand.parameters, ingest_schema)
    # entrypoints are module paths: the same wherever `gae serve` was started
    assert nightly.entrypoint == "flows.pipeline.rl_pipeline"
    assert on_demand.entrypoint == "flows.ingest.ingest_corpus"


def test_lock_message_of_a_deployment_run_names_its_parameters(tmp_path):
    from gae.lock import DataDirLocked, writer_lock

    lock = tmp_path / ".writer.lock"
    hint = "start it with another data_dir in the run's parameters"
    with writer_lock(lock, what="holder"):
        with pytest.raises(DataDirLocked, match="another --data-dir"), writer_lock(lock):
            pass
        with pytest.raises(DataDirLocked) as info, writer_lock(lock, hint=hint):
            pass
    assert "--data-dir" not in str(info.value) and "data_dir in the run's parameters" in str(info.value)


def test_the_lock_hint_follows_the_flow_run(prefect_api):
    """Outside a deployment the CLI wording stays; a flow run of a deployment gets its own."""
    from prefect import flow

    from flows.deployments import DEPLOYMENT_LOCK_HINT, lock_hint

    @flow
    def probe() -> dict:
        return lock_hint()

    assert lock_hint() == {} and probe() == {}
    assert DEPLOYMENT_LOCK_HINT.startswith("start it with another data_dir")


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        items = f.read().split(b"\0")
    return dict(i.decode().split("=", 1) for i in items if b"=" in i)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as stopped
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the child's environment")
@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_gae_serve_gives_its_server_its_port_and_stops_within_5_s(tmp_path, how):
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
        "DO_NOT_TRACK": "1",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gae.cli",
            "serve",
            "--preset",
            "smoke",
            "--data-dir",
            str(tmp_path / "d"),
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    child = None
    try:
        lines = []
        deadline = time.time() + 180
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Stop with"):
                break
        out = "".join(lines)
        assert "Stop with" in out, out + proc.stderr.read() if proc.poll() is not None else out
        (child,) = _children(proc.pid)
        api = f"http://127.0.0.1:{port}/api"
        child_env = _environ(child)
        assert child_env["PREFECT_UI_API_URL"] == api and child_env["PREFECT_API_URL"] == api
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui-settings", timeout=10) as r:
            assert json.load(r)["api_url"] == api  # what the UI in a browser calls

        # The printed links open the current (V2) UI's pages, not the older UI's.
        links = re.findall(r"http://127\.0\.0\.1:\d+/\S+/deployments/deployment/[0-9a-f-]+", out)
        assert len(links) == 2 and all(u.startswith(f"http://127.0.0.1:{port}/v2/") for u in links)
        req = urllib.request.Request(links[0], headers={"Accept": "text/html", "Sec-Fetch-Mode": "navigate"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200 and r.url == links[0]  # served as is, no redirect
        deps = asyncio.run(_deployments(api))
        assert deps == {"nightly": "flows.pipeline.rl_pipeline", "on-demand": "flows.ingest.ingest_corpus"}

        t0 = time.perf_counter()
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:  # a terminal's Ctrl-C: SIGINT to the whole foreground process group
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
        took = time.perf_counter() - t0
        err = proc.stderr.read()
        print(f"gae serve stopped on {how} in {took:.2f} s")
        assert proc.returncode == 0, err
        assert "Traceback" not in err and "never awaited" not in err, err
        assert not _alive(child)
        assert took < 5.0, f"{how}: stopped in {took:.1f} s"
    finally:
        for pid in [child] if child else []:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def _deployments(api: str) -> dict[str, str]:
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api) as client:
        return {d.name: d.entrypoint for d in await client.read_deployments()}

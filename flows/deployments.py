"""Deployments: the nightly pipeline and on-demand ingest, served by `gae serve`.

`prefect.yaml` at the repository root declares the same two for work-pool workers.

Entrypoints are module paths (`flows.pipeline.rl_pipeline`), not file paths: Prefect writes
a file path relative to the directory `gae serve` was started in, which then shows in the UI
(`../fresh/flows/pipeline.py:rl_pipeline`) and breaks when a flow run starts elsewhere; the
package is importable wherever gaeflow is installed. The parameter schemas are shaped for
the UI's run form (`gae.formschema`).
"""

from __future__ import annotations

DEFAULT_CRON = "0 3 * * *"  # 03:00 every night, UTC (Prefect evaluates a schedule without a time zone in UTC)
DEPLOYMENT_LOCK_HINT = "start it with another data_dir in the run's parameters"


def lock_hint() -> dict:
    """writer_lock's `hint` for the flow run in progress: a run of a deployment (the UI's Run
    button, a schedule) has parameters to change, not a `--data-dir` option."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    run = getattr(ctx, "flow_run", None)
    return {"hint": DEPLOYMENT_LOCK_HINT} if getattr(run, "deployment_id", None) else {}


def _for_form(deployment, *, model_param: str = "", fixed: dict | None = None):
    """Give `deployment` the parameter schema shaped for the UI's run form (`gae.formschema`),
    and default parameters that the shaped schema admits."""
    from prefect.utilities.callables import ParameterSchema

    from gae.formschema import drop_unset_nulls, for_run_form

    schema = deployment._parameter_openapi_schema.model_dump()
    # No public hook sets a deployment's schema; RunnerDeployment keeps it in this attribute.
    deployment._parameter_openapi_schema = ParameterSchema(
        **for_run_form(schema, parameter=model_param, fixed=fixed)
    )
    params = dict(deployment.parameters or {})
    for name, value in params.items():
        prop = schema["properties"].get(name, {})
        ref = prop.get("$ref") or next((b["$ref"] for b in prop.get("anyOf", []) if "$ref" in b), None)
        if ref:
            params[name] = drop_unset_nulls(value, schema, ref)
    deployment.parameters = params
    return deployment


def build_deployments(
    *, cron: str = DEFAULT_CRON, config: dict | None = None, ingest_paths: list[str] | None = None
):
    """RunnerDeployments for `prefect.serve`: rl-pipeline/nightly and ingest-corpus/on-demand."""
    from prefect.types.entrypoint import EntrypointType

    from flows.ingest import ingest_corpus
    from flows.pipeline import rl_pipeline

    cfg = config or {}
    nightly = rl_pipeline.to_deployment(
        name="nightly",
        cron=cron,
        parameters={"config": cfg},
        description="The whole RL pipeline on a schedule: ingest (skipped when unchanged), pretrain (cached), PPO iterations, registration.",
        tags=["gaeflow"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    _for_form(nightly, model_param="config", fixed={"preset": cfg.get("preset", "default")})
    # On-demand ingest writes where the served pipeline reads: its data directory, corpus and
    # ingest options by default (each can be changed in the UI's run form).
    defaults = {
        "paths": ingest_paths if ingest_paths is not None else cfg.get("corpus"),
        "data_dir": cfg.get("data_dir"),
        "options": cfg.get("ingest"),
    }
    params = {k: v for k, v in defaults.items() if v is not None}
    on_demand = ingest_corpus.to_deployment(
        name="on-demand",
        parameters=params or None,
        description="Ingest a corpus into the data directory's DuckDB; start it from the UI's Run button.",
        tags=["gaeflow"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    _for_form(on_demand)
    return [nightly, on_demand]

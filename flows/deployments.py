"""Deployments: the nightly pipeline and on-demand ingest, served by `gae serve`.

`prefect.yaml` at the repository root declares the same two for work-pool workers.
"""

from __future__ import annotations

DEFAULT_CRON = "0 3 * * *"  # 03:00 every night, UTC (Prefect evaluates a schedule without a time zone in UTC)


def build_deployments(
    *, cron: str = DEFAULT_CRON, config: dict | None = None, ingest_paths: list[str] | None = None
):
    """RunnerDeployments for `prefect.serve`: rl-pipeline/nightly and ingest-corpus/on-demand."""
    from flows.ingest import ingest_corpus
    from flows.pipeline import rl_pipeline

    nightly = rl_pipeline.to_deployment(
        name="nightly",
        cron=cron,
        parameters={"config": config or {}},
        description="The whole RL pipeline on a schedule: ingest (skipped when unchanged), pretrain (cached), PPO iterations, registration.",
        tags=["gaeflow"],
    )
    # On-demand ingest writes where the served pipeline reads: its data directory, corpus and
    # ingest options by default (each can be changed in the UI's run form).
    cfg = config or {}
    defaults = {
        "paths": ingest_paths if ingest_paths is not None else cfg.get("corpus"),
        "data_dir": cfg.get("data_dir"),
        "options": cfg.get("ingest"),
    }
    on_demand = ingest_corpus.to_deployment(
        name="on-demand",
        parameters={k: v for k, v in defaults.items() if v is not None} or None,
        description="Ingest a corpus into the data directory's DuckDB; start it from the UI's Run button.",
        tags=["gaeflow"],
    )
    return [nightly, on_demand]

"""Prefect task: ingest a corpus (files, folders, globs, or the embedded default) into DuckDB."""

from __future__ import annotations

from prefect import get_run_logger, task


@task(name="ingest-corpus")
def ingest_task(data_dir: str | None, paths: list[str] | None = None, options: dict | None = None) -> dict:
    """Run `gae.ingest.ingest` and return its summary as a dict (counts, quarantine by reason,
    `ingest_id` and `database`), not the data: later tasks read documents and prompts from
    DuckDB by `ingest_id` or split. Idempotent (a rerun adds nothing), so safe to rerun.

    options: a `gae.ingest.IngestConfig` as a dict. The caller holds the data directory's
    writer lock (the flows do); this task does not take it, so it can run inside rl-pipeline.
    """
    from gae.ingest import IngestConfig, ingest

    cfg = IngestConfig.model_validate(options or {})
    summary = ingest(paths, data_dir=data_dir, options=cfg)
    get_run_logger().info("%s", summary.render())
    # per-file rows stay in the database (`gae query ingests`); the result keeps the totals
    return summary.model_dump(mode="json", exclude={"sources"})

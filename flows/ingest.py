"""`ingest-corpus`: ingest files (or the embedded default corpus) into a data directory's DuckDB."""

from __future__ import annotations

from prefect import flow

from tasks.ingest import ingest_task


@flow(name="ingest-corpus", log_prints=True)
def ingest_corpus(
    paths: list[str] | None = None, data_dir: str | None = None, options: dict | None = None
) -> dict:
    """Ingest under the data directory's writer lock, so it never interleaves with a pipeline run.

    paths: files, folders or globs (None: the embedded default corpus); options: IngestConfig fields.
    """
    from gae.lock import writer_lock
    from gae.paths import DataDir

    dd = DataDir.resolve(data_dir)
    dd.root.mkdir(parents=True, exist_ok=True)
    from flows.deployments import lock_hint

    with writer_lock(dd.lock, what="ingest-corpus flow", **lock_hint()):
        return ingest_task(str(dd.root), paths, options)

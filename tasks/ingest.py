"""Prefect task: ingest a corpus (files, folders, globs, or the embedded default) into DuckDB."""

from __future__ import annotations

from prefect import get_run_logger, task


@task(name="ingest-corpus")
def ingest_task(
    data_dir: str | None,
    paths: list[str] | None = None,
    options: dict | None = None,
    *,
    skip_unchanged: bool = False,
) -> dict:
    """Run `gae.ingest.ingest` and return its summary as a dict (counts, quarantine by reason,
    `ingest_id` and `database`), not the data: later tasks read documents and prompts from
    DuckDB by `ingest_id` or split. Idempotent (a rerun adds nothing), so safe to rerun.

    options: a `gae.ingest.IngestConfig` as a dict. The caller holds the data directory's
    writer lock (the flows do); this task does not take it, so it can run inside rl-pipeline.

    skip_unchanged: when the database already holds this corpus (same files, sizes,
    modification times and options; `gae.fingerprint`), return the recorded summary with
    `skipped: True` instead of reading the files again.

    The result's `corpus_id` (the id of the ingest that read this corpus) names its documents
    in `ingest_documents`: pretraining and prompt sampling take it to read exactly this corpus,
    not every corpus the data directory has held.
    """
    from gae import db, fingerprint
    from gae.ingest import IngestConfig, ingest

    cfg = IngestConfig.model_validate(options or {})
    fp = fingerprint.corpus_fingerprint(paths, cfg.model_dump(mode="json"))
    if skip_unchanged:
        con = db.connect(data_dir, views=False)
        try:
            seen = fingerprint.lookup(con, fp)
            # an ingest from before ingest_documents existed: read the files once more to list them
            scoped = seen is not None and fingerprint.has_documents(con, seen["ingest_id"])
        finally:
            con.close()
        if seen is not None and scoped:
            get_run_logger().info("corpus unchanged since ingest %s: skipped", seen["ingest_id"])
            return {**seen, "skipped": True, "corpus_id": seen["ingest_id"]}
    summary = ingest(paths, data_dir=data_dir, options=cfg)
    get_run_logger().info("%s", summary.render())
    # per-file rows stay in the database (`gae query ingests`); the result keeps the totals
    out = summary.model_dump(mode="json", exclude={"sources"})
    if summary.files_failed:
        # not recorded as read: a file made readable again (chmod) keeps its size and modification time,
        # and the next run must read it rather than skip the corpus
        get_run_logger().warning(
            "%d files could not be read and were quarantined whole", summary.files_failed
        )
    else:
        con = db.connect(data_dir, views=False)
        try:
            fingerprint.record(con, fp, out["ingest_id"], out)
        finally:
            con.close()
    return {**out, "skipped": False, "corpus_id": out["ingest_id"]}

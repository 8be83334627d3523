-- Record an ingest stopped by an error, with the files it had committed before it.
update ingests
set
    status = 'failed',
    finished_at = current_timestamp,
    files = $files,
    files_failed = $files_failed,
    records = $records,
    inserted = $inserted,
    duplicates = $duplicates,
    quarantined = $quarantined,
    prompts = $prompts,
    bytes_read = $bytes_read,
    error = $error
where ingest_id = $ingest_id;

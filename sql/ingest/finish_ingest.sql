-- Record a completed ingest and what it read.
update ingests
set
    status = 'completed',
    finished_at = current_timestamp,
    files = $files,
    files_failed = $files_failed,
    records = $records,
    inserted = $inserted,
    duplicates = $duplicates,
    quarantined = $quarantined,
    prompts = $prompts,
    bytes_read = $bytes_read
where ingest_id = $ingest_id;

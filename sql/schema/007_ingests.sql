-- One row per ingest, written when it starts (status 'running', committed before any file is read) and
-- updated when it ends: 'completed' with its counts, or 'failed' with the error that stopped it (a full
-- disk, a database error). An ingest killed, or unable to record its own failure, stays 'running';
-- DuckDB lets no other process open the file while a writer has it, so a reader never sees a live
-- one, and `gae query ingests` shows such a row as 'interrupted'.
-- Ingests from before this migration have no row here; `gae query ingests` still lists them.
-- Reasons added to ingest_errors.reason since 002: csv_no_header, control_characters.
create table if not exists ingests (
    ingest_id     varchar primary key,
    status        varchar not null check (status in ('running', 'completed', 'failed')),
    inputs        json,               -- the paths, folders and globs as given (null: the embedded default corpus)
    started_at    timestamp not null default current_timestamp,
    finished_at   timestamp,
    files         integer,            -- files read, the ones quarantined whole included
    files_failed  integer,            -- files that could not be read at all, each one `unreadable` row of ingest_errors
    records       bigint,             -- = inserted + duplicates + quarantined
    inserted      bigint,
    duplicates    bigint,
    quarantined   bigint,
    prompts       bigint,
    bytes_read    bigint,
    error         varchar             -- why a failed ingest stopped
);

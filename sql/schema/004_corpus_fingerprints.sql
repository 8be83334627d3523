-- Corpora already ingested, by fingerprint (files, sizes, modification times, ingest options):
-- the pipeline skips an ingest whose fingerprint is here. Deleting the database forgets them,
-- so a cache entry never outlives the rows it stands for.
create table if not exists corpus_fingerprints (
    fingerprint varchar primary key,
    ingest_id   varchar not null,
    summary     json not null,       -- the IngestSummary of the ingest that read this corpus
    created_at  timestamp not null default current_timestamp
);

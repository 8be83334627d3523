-- The corpus: one row per distinct document (deduplicated by content hash, across runs).
create table if not exists documents (
    -- First 16 hex digits of content_hash: the same text gets the same id on every machine and run.
    -- Unique by construction (ingest inserts only ids not present, under DuckDB's single writer);
    -- no PRIMARY KEY: its index made inserts 3x slower. `gae query check_corpus` verifies it.
    document_id  varchar not null,
    source_uri   varchar not null,   -- file:///abs/path.jsonl, or python-stdlib:<path> for the default corpus
    line         bigint,             -- 1-based line where the record starts (JSON lines, CSV, text), else null
    record       bigint,             -- 1-based record number (JSON array element, CSV/Parquet row, text block)
    -- md5 (hex) of the text after Unicode NFC, every whitespace run folded into one space, trimmed.
    content_hash varchar not null,
    text         varchar not null,   -- exactly as read (not normalised)
    n_chars      integer not null,
    metadata     json,               -- the record's other fields
    -- 'eval' when the id's first 8 hex digits mod 10000 fall under the eval fraction; set once, never moved.
    split        varchar not null check (split in ('train', 'eval')),
    ingest_id    varchar not null,   -- the `gae ingest` invocation that first inserted it
    ingested_at  timestamp not null default current_timestamp
);

-- The quarantine: every record that was read but not accepted, with where it was and why.
create table if not exists ingest_errors (
    error_id    varchar primary key,  -- hash of (source, location, reason, raw): a rerun adds nothing
    source_uri  varchar not null,
    line        bigint,               -- 1-based line, when the format has lines
    record      bigint,               -- 1-based record number, when the format has records
    byte_offset bigint,               -- offset in the (decompressed) file, when known
    -- invalid_utf8 | malformed_json | not_an_object | malformed_csv | missing_field | bad_field_type
    -- | empty_text | too_large | unreadable
    reason      varchar not null,
    detail      varchar,
    raw         varchar,              -- the record as read, truncated; invalid bytes shown as \xNN
    ingest_id   varchar not null,
    created_at  timestamp not null default current_timestamp
);

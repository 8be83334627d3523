-- Each ingest: when, the documents, prompts and quarantined records it added, whether it completed, and the files it read and quarantined whole
-- status: completed | failed (with the error) | interrupted (killed, or its failure could not be recorded:
-- DuckDB lets no reader in while an ingest runs, so a row still 'running' is one that never ended) |
-- null (an ingest from before the `ingests` table). files_failed: files that could not be read at all
-- (a truncated gzip, permission denied), each one `unreadable` row of ingest_errors.
with d as (
    select
        ingest_id,
        min(ingested_at) as started,
        count(*) as documents,
        sum(n_chars) as chars
    from documents
    group by all
),

p as (select ingest_id, count(*) as prompts from prompts group by all),

e as (
    select
        ingest_id,
        min(created_at) as started,
        count(*) as quarantined,
        count(*) filter (where reason = 'unreadable' and line is null and record is null) as files_failed
    from ingest_errors
    group by all
),

known as (
    select
        ingest_id,
        started_at,
        case status when 'running' then 'interrupted' else status end as status,
        files,
        files_failed,
        records,
        error
    from ingests
),

seen as (
    select ingest_id from known
    union
    select ingest_id from d
    union
    select ingest_id from e
)

select
    ingest_id,
    coalesce(k.started_at, least(d.started, e.started)) as started,
    coalesce(d.documents, 0) as documents,
    coalesce(d.chars, 0) as chars,
    coalesce(p.prompts, 0) as prompts,
    coalesce(e.quarantined, 0) as quarantined,
    k.status,
    k.files,
    coalesce(k.files_failed, e.files_failed, 0) as files_failed,
    k.records,
    k.error
from seen
left join known as k using (ingest_id)
left join d using (ingest_id)
left join e using (ingest_id)
left join p using (ingest_id)
order by started;

-- Each ingest run: when, and the documents, prompts and quarantined records it added
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

e as (select ingest_id, min(created_at) as started, count(*) as quarantined from ingest_errors group by all)

select
    ingest_id,
    least(d.started, e.started) as started,
    coalesce(d.documents, 0) as documents,
    coalesce(d.chars, 0) as chars,
    coalesce(p.prompts, 0) as prompts,
    coalesce(e.quarantined, 0) as quarantined
from d
full outer join e using (ingest_id)
left join p using (ingest_id)
order by started;

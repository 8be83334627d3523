-- Documents, characters and prompts per source file and split
with docs as (
    select
        source_uri,
        split,
        count(*) as documents,
        sum(n_chars) as chars
    from documents
    group by all
),

prompt_counts as (
    select
        d.source_uri,
        p.split,
        count(*) as prompts
    from prompts as p
    inner join documents as d using (document_id)
    group by all
)

select
    docs.source_uri,
    docs.split,
    docs.documents,
    docs.chars,
    coalesce(prompt_counts.prompts, 0) as prompts
from docs
left join prompt_counts using (source_uri, split)
order by docs.source_uri, docs.split;

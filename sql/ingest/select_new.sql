-- The accepted records of _classified that are new: first occurrence of each content hash in the chunk,
-- and not already in documents (from an earlier file or run) or staged (from an earlier chunk of this file).
create or replace temp table _new as
with accepted as (
    select
        *,
        left(content_hash, 16) as document_id
    from _classified
    where reason is null
    qualify row_number() over (partition by content_hash order by line, record, byte_offset) = 1
)

select
    *,
    -- The split follows from the id alone, so a rerun or another machine puts a document in the same split.
    case when ('0x' || left(document_id, 8))::ubigint % 10000 < $eval_bp then 'eval' else 'train' end as split
from accepted as a
where
    not exists (select 1 from documents as d where d.document_id = a.document_id)
    -- staged by an earlier chunk of the same file, not yet in documents
    and not exists (select 1 from _pending_documents as p where p.document_id = a.document_id);

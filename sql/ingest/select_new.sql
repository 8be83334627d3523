-- The accepted records of _classified that are new: first occurrence of each content hash in the chunk,
-- and not already in documents (from an earlier file or run) or staged (from an earlier chunk of this file).
-- The first occurrences are picked on narrow rows (rowid, hash, location) and joined back by rowid: a window
-- over the whole rows (texts included) cost twice as much. Ties (small text files read together, each at
-- line 1) go to the first source. Explicit anti joins: `not exists` made DuckDB materialize _classified.
create or replace temp table _new as
select
    c.*,
    left(c.content_hash, 16) as document_id,
    -- The split follows from the id alone, so a rerun or another machine puts a document in the same split.
    case when ('0x' || left(c.content_hash, 8))::ubigint % 10000 < $eval_bp then 'eval' else 'train' end as split
from _classified as c
semi join (
    select rowid as rid
    from _classified
    where reason is null
    qualify row_number() over (partition by content_hash order by line, record, byte_offset, source) = 1
) as f on c.rowid = f.rid
anti join documents as d on d.document_id = left(c.content_hash, 16)
-- staged by an earlier chunk of the same file, not yet in documents
anti join _pending_documents as p on p.document_id = left(c.content_hash, 16);

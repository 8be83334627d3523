-- Prompts stored as spans of their document's text instead of copies of it: a cut prompt and its
-- reference are character offsets into documents.text (the corpus was written twice before, and
-- cutting + inserting the copies was the largest cost of an ingest after classifying). Prompts given
-- in a record's `prompt`/`reference` fields are not in the text and keep their strings here.
create table prompt_spans (
    prompt_id       varchar not null,  -- <document_id>-<passage number>; unique by construction, no index
    document_id     varchar not null,
    -- 1-based start and length in characters (Unicode code points, DuckDB's substr/length; not bytes)
    -- of the trimmed prompt and reference in documents.text; null where the strings below are given.
    prompt_start    integer,
    prompt_len      integer,
    reference_start integer,
    reference_len   integer,
    prompt          varchar,           -- field prompts (and rows stored before this migration)
    reference       varchar,
    split           varchar not null check (split in ('train', 'eval')),
    origin          varchar not null check (origin in ('field', 'cut')),
    ingest_id       varchar not null,
    created_at      timestamp not null default current_timestamp,
    check ((prompt is null) <> (prompt_start is null)),
    check ((prompt_start is null) = (prompt_len is null)),
    check ((reference_start is null) = (reference_len is null)),
    check (reference_start is null or prompt_start is not null)
);

-- A database from before keeps its prompts, as strings.
insert into prompt_spans (prompt_id, document_id, prompt, reference, split, origin, ingest_id, created_at)
select prompt_id, document_id, prompt, reference, split, origin, ingest_id, created_at
from prompts;

drop table prompts;

-- The columns and meaning of the former table, for every reader (rollouts, named queries, `gae sql`).
-- A left join keeps a span whose document is missing (its text is then null), so check_corpus still
-- reports it. Spans are resolved against the text as stored, never normalised.
create view prompts as
select
    s.prompt_id,
    s.document_id,
    coalesce(s.prompt, substr(d.text, s.prompt_start, s.prompt_len)) as prompt,
    case
        when s.reference_start is null then s.reference
        else substr(d.text, s.reference_start, s.reference_len)
    end as reference,
    s.split,
    s.origin,
    s.ingest_id,
    s.created_at
from prompt_spans as s
left join documents as d on d.document_id = s.document_id;

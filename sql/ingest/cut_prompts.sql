-- One passage of every document in _cut_state: the prompt runs to the last sentence boundary within
-- $prompt_chars of pos (leaving room for a reference), the reference to the last boundary within
-- $reference_chars after it (or to the end of the text when that is nearer). gae.ingest.cut_passages
-- is the same rule in Python, the reference the tests compare against. Offsets count characters.
create or replace temp table _cut_step as
with windowed as (
    select
        *,
        regexp_extract(substr(text, pos + 1, least($prompt_chars, n - pos - $min_reference_chars)), $boundary) as p_raw
    from _cut_state
    where n - pos >= $min_prompt_chars + $min_reference_chars
),

prompted as (
    select
        *,
        pos + length(p_raw) as pe
    from windowed
    where length(trim(p_raw, $ws)) >= $min_prompt_chars
),

referenced as (
    select
        *,
        case
            when n - pe <= $reference_chars then substr(text, pe + 1)
            else regexp_extract(substr(text, pe + 1, $reference_chars), $boundary)
        end as r_raw
    from prompted
)

select
    document_id,
    split,
    text,
    n,
    pe + length(r_raw) as pos,
    trim(p_raw, $ws) as prompt,
    trim(r_raw, $ws) as reference
from referenced
where length(trim(r_raw, $ws)) >= $min_reference_chars;

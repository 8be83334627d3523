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
        -- trimmed with a regexp: trim(s, chars) is 2x slower here
        regexp_replace(p_raw, $trim, '', 'g') as prompt,
        pos + length(p_raw) as pe
    from windowed
),

referenced as (
    select
        *,
        case
            when n - pe <= $reference_chars then substr(text, pe + 1)
            else regexp_extract(substr(text, pe + 1, $reference_chars), $boundary)
        end as r_raw
    from prompted
),

trimmed as (
    select
        *,
        regexp_replace(r_raw, $trim, '', 'g') as reference
    from referenced
)

select
    document_id,
    split,
    -- the text goes on only where another passage fits: most documents are used up by their first,
    -- and copying every text into each step cost as much as cutting it
    case when n - pe - length(r_raw) >= $min_prompt_chars + $min_reference_chars then text end as text,
    n,
    pe + length(r_raw) as pos,
    prompt,
    reference
from trimmed;
-- No filter on prompt/reference here: DuckDB would push it below the projections and compute the
-- regexps and trims twice. The caller filters the materialized rows (length >= the minimums).

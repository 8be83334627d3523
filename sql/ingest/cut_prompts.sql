-- One passage of every document in _cut_state: the prompt runs to the last sentence boundary within
-- $prompt_chars of pos (leaving room for a reference), the reference to the last boundary within
-- $reference_chars after it (or to the end of the text when that is nearer). gae.ingest.cut_passages
-- is the same rule in Python, the reference the tests compare against. Offsets count characters
-- (code points, as substr and length do), not bytes.
-- A passage is kept as spans of the text (prompt_spans), not as copies: the 1-based start and length
-- of the prompt and the reference, each with the whitespace of $lead/$trail ($trim's characters) cut
-- off its ends, so substr(text, prompt_start, prompt_len) is cut_passages' stripped prompt.
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
        pos + length(p_raw) as pe,
        -- measured, not trimmed: regexp_extract of a (usually empty) run copies nothing of the passage
        length(regexp_extract(p_raw, $lead)) as p_lead,
        length(regexp_extract(p_raw, $trail)) as p_trail
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

measured as (
    select
        *,
        length(r_raw) as r_n,
        length(regexp_extract(r_raw, $lead)) as r_lead,
        length(regexp_extract(r_raw, $trail)) as r_trail
    from referenced
)

select
    document_id,
    split,
    -- the text goes on only where another passage fits: most documents are used up by their first,
    -- and copying every text into each step cost as much as cutting it
    case when n - pe - r_n >= $min_prompt_chars + $min_reference_chars then text end as text,
    n,
    pe + r_n as pos,
    pos + 1 + p_lead as prompt_start,
    -- a run of only whitespace is both lead and trail: its trimmed length is 0
    greatest(pe - pos - p_lead - p_trail, 0) as prompt_len,
    pe + 1 + r_lead as reference_start,
    greatest(r_n - r_lead - r_trail, 0) as reference_len
from measured;
-- No filter on the lengths here: DuckDB would push it below the projections and compute the regexps
-- twice. The caller filters the materialized rows (lengths >= the minimums).

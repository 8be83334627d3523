-- Classify one staged chunk of records (_chunk): decode, parse, pick fields, normalise, hash.
-- _chunk(line, record, byte_offset, raw blob, body varchar, is_json, meta, reason, detail, source): a record is
-- either raw bytes (JSON lines; decoded here so invalid UTF-8 is caught per line) or an already
-- decoded body (JSON text from DuckDB's readers, or plain text with is_json = false).
-- Each record's JSON is parsed four times (json_valid; json_type and json_extract_string of the three
-- fields at once; json_merge_patch for the other fields); every other step works on the extracted values.
create or replace temp table _classified as
with decoded as (
    select
        coalesce(source, $source_uri) as source, line, record, byte_offset, raw, is_json, meta, reason, detail,
        coalesce(body, try(decode(raw))) as s
    from _chunk
),

parsed as (
    select
        *,
        case
            when reason is not null then reason
            when s is null then 'invalid_utf8'
            when is_json and not json_valid(s) then 'malformed_json'
            -- valid JSON starting with `{` is an object: no second parse needed to tell
            when is_json and not regexp_matches(s, '^\s*\{') then 'not_an_object'
        end as r1
    from decoded
),

extracted as (
    select
        *,
        -- the three fields' types and values (strings unescaped; arrays and other values as JSON text)
        case when r1 is null and is_json then json_type(s, [$text_path, $prompt_path, $reference_path]) end
            as types,
        case when r1 is null and is_json then json_extract_string(s, [$text_path, $prompt_path, $reference_path]) end
            as parts
    from parsed
),

typed as (
    select
        *,
        types[1] as text_type,
        types[2] as prompt_type,
        types[3] as reference_type
    from extracted
),

picked as (
    select
        *,
        case
            when r1 is null and not is_json then s
            when text_type = 'VARCHAR' then parts[1]
            -- a list of strings, such as a poem's `paragraphs`, becomes one text
            when text_type = 'ARRAY' then array_to_string(json_extract_string(parts[1], '$[*]'), $joiner)
        end as text_value,
        case
            when prompt_type = 'VARCHAR' then parts[2]
            when prompt_type = 'ARRAY' then array_to_string(json_extract_string(parts[2], '$[*]'), $joiner)
        end as prompt,
        case
            when reference_type = 'VARCHAR' then parts[3]
            when reference_type = 'ARRAY' then array_to_string(json_extract_string(parts[3], '$[*]'), $joiner)
        end as reference
    from typed
),

texted as (
    select
        *,
        case
            when text_value is not null then text_value
            when prompt is not null then concat_ws(e'\n\n', prompt, reference)
        end as text
    from picked
),

flagged as (
    select
        *,
        -- How much of normalise() a text needs, decided at memchr speed where possible (null: none, it is
        -- rejected or too large). 'ascii': one byte a character, folded below only if it holds a run of
        -- spaces or other whitespace. 'plain': other text in which one RE2 pass over $rare (every character
        -- NFC might change, whitespace other than a space, control characters) and a search for two spaces
        -- found nothing, so it is its own normal form (most text in any language). 'rare': the rest.
        case
            when r1 is not null or text is null or length(text) > $max_chars then null
            when strlen(text) = length(text) then 'ascii'
            when contains(text, '  ') or regexp_matches(text, $rare) then 'rare'
            else 'plain'
        end as kind
    from texted
),

folded as (
    select
        *,
        case
            when kind is null then null
            when kind = 'plain' then text
            when kind = 'ascii'
                and not (contains(text, '  ') or contains(text, e'\n') or contains(text, e'\t')
                    or contains(text, e'\r') or contains(text, chr(11)) or contains(text, chr(12)))
                then text
            else regexp_replace(
                -- nfc_normalize is slow (~30 MB/s): only texts holding a character that NFC could
                -- change go through it ($nfc_suspects, built from unicodedata in gae/ingest/text.py)
                case
                    when kind <> 'rare' or not regexp_matches(text, $nfc_suspects) then text
                    -- DuckDB's nfc_normalize stops at a NUL; NFC never acts across one (a starter)
                    when contains(text, chr(0))
                        then array_to_string(list_transform(string_split(text, chr(0)), lambda x: nfc_normalize(x)), chr(0))
                    else nfc_normalize(text)
                end,
                -- fold whitespace runs into one space; matching only runs of 2+ and single non-space
                -- whitespace (\p{Z} adds NBSP, U+3000 and the other Unicode spaces RE2's \s leaves out)
                -- replaces the same runs as [\s\p{Z}]+ but 8x faster: single spaces are left alone
                '[\s\v\p{Z}]{2,}|[\t\n\v\f\r\x{00A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}]',
                ' ',
                'g'
            )
        end as folded
    from flagged
),

normalised as (
    select
        *,
        -- after folding at most one space is left at either end; trim() scans the whole string, so
        -- only the few texts that need it pay for it
        case when starts_with(folded, ' ') or ends_with(folded, ' ') then trim(folded) else folded end as norm
    from folded
),

checked as (
    select
        *,
        -- Control characters other than whitespace (C0 but \t\n\v\f\r, DEL, C1): binary data, or UTF-16
        -- read as UTF-8 (a file of NUL bytes is valid UTF-8). Counted only where one can be: never in
        -- 'plain' text; in ASCII text from JSON only behind an escape (\u00XX, \b) or as a raw DEL.
        case
            when kind is null or kind = 'plain' then 0
            when kind = 'ascii' and is_json and not (contains(s, '\u00') or contains(s, '\b') or contains(s, chr(127)))
                then 0
            when regexp_matches(text, '[\x00-\x08\x0E-\x1F\x7F-\x9F]')
                then length(text) - length(regexp_replace(text, '[\x00-\x08\x0E-\x1F\x7F-\x9F]', '', 'g'))
            else 0
        end as n_control
    from normalised
),

classified as (
    select
        *,
        case
            when r1 is not null then r1
            when text_type not in ('VARCHAR', 'ARRAY', 'NULL') then 'bad_field_type'
            when prompt_type not in ('VARCHAR', 'ARRAY', 'NULL') then 'bad_field_type'
            when reference_type not in ('VARCHAR', 'ARRAY', 'NULL') then 'bad_field_type'
            when text is null then 'missing_field'
            when length(text) > $max_chars then 'too_large'
            when norm = '' then 'empty_text'
            when n_control > $max_control * length(text) then 'control_characters'
        end as why
    from checked
)

select
    source,
    line,
    record,
    byte_offset,
    why as reason,
    case
        when why is null then null
        when detail is not null then detail
        when why = 'invalid_utf8' then 'not valid UTF-8'
        when why = 'malformed_json' then 'not valid JSON'
        when why = 'not_an_object' then 'a JSON ' || lower(json_type(s)) || ', not an object'
        when why = 'bad_field_type' then 'field types: text ' || coalesce(text_type, 'missing')
            || ', prompt ' || coalesce(prompt_type, 'missing') || ', reference ' || coalesce(reference_type, 'missing')
        when why = 'missing_field' then 'no ' || $text_field_name || ' or ' || $prompt_field_name || ' field'
        when why = 'too_large' then length(text) || ' characters, over the limit of ' || $max_chars
        when why = 'empty_text' then 'the text is empty or only whitespace'
        when why = 'control_characters' then n_control || ' of ' || length(text)
            || ' characters are control characters: binary data, or a UTF-16 file?'
    end as detail,
    case
        when why is null then null
        -- a line keeps its terminator in the staged bytes; the quarantine copy does not need it
        when s is not null then rtrim(left(s, $raw_max), e'\r\n')
        -- invalid UTF-8: DuckDB renders the bytes with \xNN escapes
        else left(cast(raw as varchar), $raw_max)
    end as raw,
    case when why is null then text end as text,
    case when why is null then prompt end as prompt,
    case when why is null then reference end as reference,
    case when why is null then (case when is_json then json_merge_patch(s, $meta_remove) else meta end) end
        as metadata,
    -- md5: a dedup key, not a signature; 1.6x faster than sha256 here
    case when why is null then md5(norm) end as content_hash
from classified;

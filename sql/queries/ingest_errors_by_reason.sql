-- Quarantined records per reason and source, with the first location and an example
select
    reason,
    source_uri,
    count(*) as records,
    min(coalesce(line, record)) as first_line_or_record,
    arg_min(left(raw, 80), coalesce(line, record, byte_offset)) as example,
    arg_min(detail, coalesce(line, record, byte_offset)) as detail
from ingest_errors
group by all
order by reason, source_uri;

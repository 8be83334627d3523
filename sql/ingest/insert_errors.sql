-- Quarantine the rejected records of _classified; an error already recorded (same id) is not added again.
insert into ingest_errors (error_id, source_uri, line, record, byte_offset, reason, detail, raw, ingest_id)
select error_id, source, line, record, byte_offset, reason, detail, raw, $ingest_id
from (
    select
        *,
        left(md5(concat_ws('|', source, line, record, byte_offset, reason, raw)), 16) as error_id
    from _classified
    where reason is not null
) as e
where not exists (select 1 from ingest_errors as x where x.error_id = e.error_id)
qualify row_number() over (partition by error_id order by line, record, byte_offset) = 1;

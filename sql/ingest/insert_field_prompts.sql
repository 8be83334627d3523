-- Insert the prompts that the new records of _new gave explicitly (`prompt`/`reference` fields).
insert into prompts (prompt_id, document_id, prompt, reference, split, origin, ingest_id)
select document_id || '-0', document_id, prompt, reference, split, 'field', $ingest_id
from _new
where prompt is not null;

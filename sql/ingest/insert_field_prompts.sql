-- Stage the prompts that the new records of _new gave explicitly (`prompt`/`reference` fields).
insert into _pending_prompts
select document_id || '-0', document_id, prompt, reference, split, 'field'
from _new
where prompt is not null;

-- Stage the prompts that the new records of _new gave explicitly (`prompt`/`reference` fields). They are
-- not spans of the text (a record may have a text besides), so they keep their strings.
insert into _pending_prompts (prompt_id, document_id, prompt, reference, split, origin)
select document_id || '-0', document_id, prompt, reference, split, 'field'
from _new
where prompt is not null;

-- Write a file's staged prompts in one insert, just before its commit (see flush_documents.sql).
insert into prompt_spans (
    prompt_id, document_id, prompt_start, prompt_len, reference_start, reference_len,
    prompt, reference, split, origin, ingest_id
)
select *, $ingest_id
from _pending_prompts;

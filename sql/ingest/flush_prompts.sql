-- Write a file's staged prompts in one insert, just before its commit (see flush_documents.sql).
insert into prompts (prompt_id, document_id, prompt, reference, split, origin, ingest_id)
select *, $ingest_id
from _pending_prompts;

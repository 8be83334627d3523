-- Stage the new documents of _new in _pending_documents; flush_documents.sql writes them at the end of the file.
insert into _pending_documents
select document_id, source, line, record, content_hash, text, length(text), metadata, split
from _new;

-- Insert the new documents of _new.
insert into documents (document_id, source_uri, line, record, content_hash, text, n_chars, metadata, split, ingest_id)
select document_id, source, line, record, content_hash, text, length(text), metadata, split, $ingest_id
from _new;

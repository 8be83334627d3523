-- Write a file's staged documents in one insert, just before its commit. Inserting chunk by chunk left
-- partly filled row groups that went through the write-ahead log and were compressed again at the
-- checkpoint (a third of the ingest time on 200 MB); one insert fills whole row groups, written once.
-- _pending_documents is a view over each chunk's table of new documents (gae/ingest/writer.py).
insert into documents (document_id, source_uri, line, record, content_hash, text, n_chars, metadata, split, ingest_id)
select *, $ingest_id
from _pending_documents;

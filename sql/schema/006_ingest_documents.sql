-- The documents each ingest read, new or already stored: a pipeline run pretrains on and samples
-- prompts from exactly the documents of its corpus's ingest (the one recorded for the corpus
-- fingerprint in 004), even when the data directory holds other corpora, an earlier version of
-- an edited file, or the same texts under other file names (documents are deduplicated by content).
create table if not exists ingest_documents (
    ingest_id   varchar not null,   -- ingests.ingest_id / corpus_fingerprints.ingest_id
    document_id varchar not null    -- documents.document_id
);

-- The source files of each corpus a pipeline ingested (by the corpus fingerprint of 004): a run
-- pretrains on and samples prompts from its own corpus only, even when the data directory also
-- holds documents of other corpora ingested before.
create table if not exists corpus_sources (
    fingerprint varchar not null,   -- corpus_fingerprints.fingerprint
    source_uri  varchar not null    -- documents.source_uri
);

-- Record an ingest as running before it reads anything; finish_ingest.sql or fail_ingest.sql ends it.
insert into ingests (ingest_id, status, inputs) values ($ingest_id, 'running', $inputs);

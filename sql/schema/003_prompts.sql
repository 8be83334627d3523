-- Prompts for rollouts: given in the record (`prompt`/`reference` fields) or cut from its text.
create table if not exists prompts (
    prompt_id   varchar not null,  -- <document_id>-<passage number>; unique by construction, no index
    document_id varchar not null,
    prompt      varchar not null,
    reference   varchar,              -- the continuation or answer, for similarity and verifiable rewards
    -- The split of the prompt's document, so no eval prompt's text is ever in the pretraining split.
    split       varchar not null check (split in ('train', 'eval')),
    origin      varchar not null check (origin in ('field', 'cut')),
    ingest_id   varchar not null,
    created_at  timestamp not null default current_timestamp
);

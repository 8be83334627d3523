-- Which schema files have been applied; the migration step in gae/db.py reads and appends it.
create table if not exists schema_migrations (
    version    integer primary key,  -- the numeric prefix of sql/schema/NNN_name.sql
    name       varchar not null,
    applied_at timestamp not null default current_timestamp
);

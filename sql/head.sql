-- Runs first on every install, before any incremental file. It creates only what the installer
-- needs to know which incremental files a database has already applied.
create schema if not exists observability;

create table if not exists observability.schema_migrations
( name text not null
, sha256 text not null
, applied_at timestamptz not null default pg_catalog.now()
, constraint schema_migrations_pkey primary key (name)
, constraint schema_migrations_sha256_format check (sha256 ~ '^[0-9a-f]{64}$')
);

comment on table observability.schema_migrations is
  'Incremental SQL files (sql/incremental) applied to this database, with the sha256 of the file '
  'as applied. The installer refuses to run when a recorded file has since changed.';

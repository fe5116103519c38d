-- The read-only role the Grafana datasource logs in as. Run by the grafana-reader service of
-- docker-compose.yml after every migration, with psql variables reader_user and
-- reader_password. Re-running it is harmless: the role is created once, its password follows
-- the environment, and the grants cover objects recreated by the idempotent SQL files.
\set ON_ERROR_STOP on

select pg_catalog.format('create role %I login', :'reader_user')
where not exists (select from pg_catalog.pg_roles where rolname = :'reader_user')
\gexec

select pg_catalog.format('alter role %I with login nosuperuser nocreatedb nocreaterole '
  'noreplication password %L', :'reader_user', :'reader_password')
\gexec

-- Every session of the role is read-only, and a runaway dashboard query is cut short.
select pg_catalog.format('alter role %I set default_transaction_read_only = on',
  :'reader_user')
\gexec
select pg_catalog.format('alter role %I set statement_timeout = %L', :'reader_user', '60s')
\gexec

-- default_transaction_read_only is only a default, which the role may switch off in its own
-- session. It holds no write privilege on any table, and these revokes leave it nothing else
-- to create: no temporary tables (TEMPORARY comes from PUBLIC, so it is revoked there; the
-- database owner and superusers keep it, any other writer role needs an explicit grant) and no
-- large objects.
select pg_catalog.format('revoke temporary on database %I from public, %I',
  pg_catalog.current_database(), :'reader_user')
\gexec
revoke execute on function pg_catalog.lo_create(oid), pg_catalog.lo_creat(integer),
  pg_catalog.lo_from_bytea(oid, bytea), pg_catalog.lo_import(text),
  pg_catalog.lo_import(text, oid) from public;

select pg_catalog.format('grant usage on schema observability to %I', :'reader_user')
\gexec
select pg_catalog.format('grant select on all tables in schema observability to %I',
  :'reader_user')
\gexec
select pg_catalog.format('grant execute on all functions in schema observability to %I',
  :'reader_user')
\gexec

-- Which percentile sketch the rollups use, decided once, when the rollups are created:
-- timescaledb_toolkit's UddSketch where the server ships the toolkit, otherwise the project's
-- own (008-percentile-sketch.sql). The choice cannot change later without rebuilding the
-- rollups, whose materialized rows hold sketches of one kind.
--
-- It is recorded as the body of observability.percentile_sketch(). In the SQL files that follow,
-- the installer (worker/sqltemplate.py) replaces the placeholder sketch_schema between at-signs
-- with the function schema it returns, so that rollups, views and functions call
-- percentile_agg, rollup and approx_percentile there.
do $$
declare
  toolkit_schema text;
begin
  -- sql/idempotent/001-toolkit.sql also creates the extension, but idempotent files run after
  -- the incremental ones, and the rollups created next need it now.
  if exists
    (select from pg_catalog.pg_available_extensions where name = 'timescaledb_toolkit')
  then
    create extension if not exists timescaledb_toolkit with schema public;
  end if;
  select n.nspname into toolkit_schema
  from pg_catalog.pg_extension as e
  join pg_catalog.pg_namespace as n on n.oid = e.extnamespace
  where e.extname = 'timescaledb_toolkit';

  execute pg_catalog.format(
    $ddl$
    create function observability.percentile_sketch()
    returns table (implementation text, function_schema text)
    language sql immutable parallel safe
    as $body$ select %L::text, %L::text $body$
    $ddl$,
    case when toolkit_schema is null then 'observability' else 'timescaledb_toolkit' end,
    coalesce(toolkit_schema, 'observability'));
end
$$;

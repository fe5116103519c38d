-- timescaledb_toolkit (percentile_agg, rollup, approx_percentile) where the server ships it.
-- Re-run on every install, so a database moved to a server with the toolkit picks it up.
-- Absent (the embedded engine, the plain timescale/timescaledb image): nothing happens here.
do $$
begin
  if exists
    (select from pg_catalog.pg_available_extensions where name = 'timescaledb_toolkit')
  then
    create extension if not exists timescaledb_toolkit with schema public;
  end if;
end
$$;

-- TimescaleDB is required: every raw table below is a hypertable. Fail with a clear message
-- where it cannot be installed instead of the bare "extension is not available".
do $$
begin
  if not exists (select from pg_catalog.pg_available_extensions where name = 'timescaledb') then
    raise exception 'the timescaledb extension is not available on this server'
      using hint = 'Use a TimescaleDB build of PostgreSQL (for example the '
                   'timescale/timescaledb-ha image) with timescaledb in shared_preload_libraries.';
  end if;
end
$$;

-- Every call into the extension is qualified with public, so it has to live there.
create extension if not exists timescaledb with schema public;

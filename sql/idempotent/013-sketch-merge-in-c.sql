-- rollup()'s final function, observability.sketch_merge: the C build of
-- sketch_merge_plpgsql (012-sketch-speed.sql) where the server can load it, otherwise a copy of
-- that PL/pgSQL function. Both give the same sketches; the C one is several times faster on the
-- embedded engine, where it is most of a weekly rollup's time (docs/rollups.md).
--
-- The library, engine/sketch/observability_sketch.c, is built into the embedded engine by
-- `make setup` and installed on a server with `make sketch-install`
-- (docs/deployment.md). Creating a C function needs a superuser; without one, or without the
-- library, the install goes on with the PL/pgSQL merge and says so. The function keeps its OID
-- either way, so the rollup aggregate and the continuous aggregates over it are untouched.
do $$
declare
  reason text;
  plpgsql_body text;
begin
  begin
    create or replace function observability.sketch_merge
      (sketches observability.percentile_sketch[])
    returns observability.percentile_sketch
    language c immutable parallel safe
    as '$libdir/observability_sketch', 'sketch_merge';
  exception
    when undefined_file then
      reason := sqlerrm;  -- not installed: the usual case on a server
    when insufficient_privilege or feature_not_supported or internal_error then
      reason := sqlerrm;  -- e.g. a build for another PostgreSQL version
      raise warning 'the C sketch merge is installed but cannot be used: %', sqlerrm;
  end;
  if reason is null then
    return;
  end if;
  select p.prosrc into strict plpgsql_body
  from pg_catalog.pg_proc as p
  where p.oid = 'observability.sketch_merge_plpgsql(observability.percentile_sketch[])'
    ::pg_catalog.regprocedure;
  execute pg_catalog.format(
    $ddl$
    create or replace function observability.sketch_merge
      (sketches observability.percentile_sketch[])
    returns observability.percentile_sketch
    language plpgsql immutable parallel safe as %L
    $ddl$,
    plpgsql_body);
  raise notice 'sketches merge in PL/pgSQL (%)', reason;
end
$$;

-- rollup()'s final function, observability.sketch_merge: the C build of
-- sketch_merge_plpgsql (012-sketch-speed.sql) where the server can load it, otherwise a copy of
-- that PL/pgSQL function. Both give the same sketches; the C one is several times faster on the
-- embedded engine, where it is most of a weekly rollup's time (docs/rollups.md).
--
-- The library, engine/sketch/observability_sketch.c, is built into the embedded engine by
-- `make setup` and installed on a server with `make sketch-install`
-- (docs/deployment.md). Creating a C function needs a superuser. Without the library the install
-- goes on with the PL/pgSQL merge and says so in a notice; with a library it cannot use (another
-- PostgreSQL version, a broken build) or without a superuser, in a warning. A C merge a superuser
-- installed stays when the database owner installs again. The function keeps its OID either way,
-- so the rollup aggregate and the continuous aggregates over it are untouched.
do $$
declare
  merge constant pg_catalog.regprocedure :=
    pg_catalog.to_regprocedure('observability.sketch_merge(observability.percentile_sketch[])');
  state text;
  reason text;
  plpgsql_body text;
begin
  -- the C merge reads the fields by position and type (a dropped field has type 0)
  if (
    select pg_catalog.array_agg(a.atttypid order by a.attnum)
    from pg_catalog.pg_attribute as a
    where a.attrelid = 'observability.percentile_sketch'::pg_catalog.regclass and a.attnum > 0
  ) is distinct from
    '{bigint,float8,float8,integer[],bigint[]}'::pg_catalog.regtype[]::pg_catalog.oid[]
  then
    state := '42804';
    reason := 'observability.percentile_sketch is not laid out as the C merge reads it';
  else
    begin
      create or replace function observability.sketch_merge
        (sketches observability.percentile_sketch[])
      returns observability.percentile_sketch
      language c immutable parallel safe
      as '$libdir/observability_sketch', 'sketch_merge';
      return;
    exception when others then
      get stacked diagnostics state = returned_sqlstate, reason = message_text;
    end;
  end if;
  if state = '42501' and exists (
    select from pg_catalog.pg_proc as p
    join pg_catalog.pg_language as l on l.oid = p.prolang
    where p.oid = merge and l.lanname = 'c'
  ) then
    raise notice 'kept the C sketch merge a superuser installed (%)', reason;
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
  if state = '58P01' and reason like 'could not access file%' then
    raise notice 'sketches merge in PL/pgSQL (%)', reason;  -- not installed: usual on a server
  else
    raise warning 'the C sketch merge cannot be used, sketches merge in PL/pgSQL: % (SQLSTATE %)',
      reason, state;
  end if;
end
$$;

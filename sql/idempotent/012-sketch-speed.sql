-- Faster bodies for the project's percentile sketch (sql/incremental/008-percentile-sketch.sql),
-- with the same results: the bucket layout and the sketch type are unchanged. Daily and weekly
-- rollups merge sketches and read p50/p95/p99 from every merged one when they are refreshed; on
-- the embedded engine, where PL/pgSQL runs several times slower than on a native server, the
-- 008 versions' per-bucket work was most of a weekly refresh.
--
-- The unit form. A sketch whose n equals its number of keys has one count per key: each key
-- stands for one value, repeated keys allowed, and its counts may be left out (an empty array,
-- as this file's functions write it: a third of the bytes to store and read). Above 64 keys it
-- is kept sorted, so the value of rank r is the bucket of keys[r] and no walk is needed.
-- percentile_agg and rollup keep sketches in this form while sketch_stays_unit (sparse ones: a
-- user's hours, days and weeks, where almost every value has a bucket of its own), and a merge
-- of unit-form sketches is a sort of their keys' concatenation, done in C where the server has
-- the intarray extension (contrib, shipped with PostgreSQL and loaded by the embedded engine),
-- instead of one executor row per (key, count) pair. Sorted keys past that point are counted
-- into canonical pairs (a binary search per distinct key); canonical inputs take the set-based
-- merge.

-- Keys sorted ascending, repeats kept (sketch_sort_keys), and the distinct keys of a sorted
-- array (sketch_distinct_sorted_keys): intarray's sort and uniq where the server has intarray
-- (installed into its own schema, observability_intarray, so that its int[] operators never
-- shadow the built-in ones for anyone), otherwise the _sql fallbacks. The SQL-standard bodies
-- record the dependency, so intarray cannot be dropped from under them.
create or replace function observability.sketch_sort_keys_sql(ks integer[])
returns integer[]
language sql immutable strict parallel safe as $$
  select array(select k from pg_catalog.unnest(ks) as k order by k)
$$;

create or replace function observability.sketch_distinct_sorted_keys_sql(ks integer[])
returns integer[]
language sql immutable strict parallel safe as $$
  select array(select distinct k from pg_catalog.unnest(ks) as k order by k)
$$;

do $$
declare
  intarray_schema text;
  f record;
begin
  select n.nspname into intarray_schema
  from pg_catalog.pg_extension as e
  join pg_catalog.pg_namespace as n on n.oid = e.extnamespace
  where e.extname = 'intarray';
  if intarray_schema is null
     and exists (select from pg_catalog.pg_available_extensions where name = 'intarray') then
    begin
      create schema if not exists observability_intarray;
      create extension if not exists intarray with schema observability_intarray;
      intarray_schema := 'observability_intarray';
    exception when insufficient_privilege then
      raise notice 'intarray could not be installed (%); sketches merge without it', sqlerrm;
    end;
  end if;
  for f in
    select * from (values ('sketch_sort_keys', 'sort'), ('sketch_distinct_sorted_keys', 'uniq'))
      as f (name, intarray_function)
  loop
    execute pg_catalog.format(
      $ddl$
      create or replace function observability.%I(ks integer[])
      returns integer[]
      language sql immutable strict parallel safe
      return %s
      $ddl$,
      f.name,
      case when intarray_schema is null
        then pg_catalog.format('observability.%I(ks)', f.name || '_sql')
        else pg_catalog.format('%I.%I(ks)', intarray_schema, f.intarray_function) end);
  end loop;
end
$$;

-- Whether a value is counted: NULL, NaN and the infinities are not.
create or replace function observability.sketch_counts_value(v float8)
returns boolean
language sql immutable parallel safe
return v is not null and v <> 'NaN'::float8
  and v <> 'Infinity'::float8 and v <> '-Infinity'::float8;

-- Whether a sketch of n values in distinct_keys buckets is kept in the unit form: up to 8,192
-- values (32 KiB of keys) and 16 values a bucket on average. Sorting is cheaper than counting
-- each distinct key and walking the counts for percentiles, even at a dozen values a bucket (a
-- knowledge base's week in python -m bench rollups); past 16 the canonical pairs (12 bytes
-- each, against 4 a value) are much smaller, and a constant value takes one pair, not 8,192
-- keys.
create or replace function observability.sketch_stays_unit(n bigint, distinct_keys integer)
returns boolean
language sql immutable parallel safe
return n <= 8192 and n <= 16 * distinct_keys;

-- A sketch from the keys of its values, sorted with repeats (and passed flat, not through a
-- PL/pgSQL variable, which would hand each binary search an expanded array to copy): the unit
-- form where sketch_stays_unit, otherwise canonical pairs, each distinct key counted as how many
-- keys are at most it (a binary search in C) minus how many are at most the one before.
create or replace function observability.sketch_from_sorted_keys
  (min_value float8, max_value float8, ks integer[])
returns observability.percentile_sketch
language sql immutable strict parallel safe as $$
  select case
    when observability.sketch_stays_unit(u.n, pg_catalog.cardinality(u.distinct_keys))
    then row(u.n, min_value, max_value, u.ks, '{}'::bigint[])::observability.percentile_sketch
    else (
      select row(u.n, min_value, max_value, u.distinct_keys,
          pg_catalog.array_agg(c.at_most - c.before order by c.o))::observability.percentile_sketch
      from (
        select d.o, pg_catalog.width_bucket(d.k, u.ks) as at_most,
          pg_catalog.lag(pg_catalog.width_bucket(d.k, u.ks), 1, 0) over (order by d.o) as before
        from pg_catalog.unnest(u.distinct_keys) with ordinality as d (k, o)
      ) as c
    )
  end
  from (
    select sketch_from_sorted_keys.ks, pg_catalog.cardinality(sketch_from_sorted_keys.ks) as n,
      observability.sketch_distinct_sorted_keys(sketch_from_sorted_keys.ks) as distinct_keys
  ) as u
$$;

-- One (key, count) pair per key, sorted: the canonical merge. The same result as 008's, with
-- the pairs unnested in the select list (one node instead of a lateral join per sketch), and
-- unit-form inputs read too.
create or replace function observability.sketch_combine(sketches observability.percentile_sketch[])
returns observability.percentile_sketch
language sql immutable parallel safe as $$
  select case when pg_catalog.sum(b.c) is null then null else row(
      pg_catalog.sum(b.c)::bigint,
      (select pg_catalog.min((s).min_value) from pg_catalog.unnest(sketches) as s),
      (select pg_catalog.max((s).max_value) from pg_catalog.unnest(sketches) as s),
      pg_catalog.array_agg(b.k order by b.k), pg_catalog.array_agg(b.c order by b.k)
    )::observability.percentile_sketch end
  from (
    -- a unit-form sketch without counts gives NULL counts here: one value each
    select u.k, pg_catalog.sum(coalesce(u.c, 1))::bigint as c
    from (
      select pg_catalog.unnest((s).keys) as k, pg_catalog.unnest((s).counts) as c
      from pg_catalog.unnest(sketches) as s
      where s is not null
    ) as u
    group by u.k
  ) as b
$$;

-- The merge of rollup()'s final function, observability.sketch_merge, which
-- 013-sketch-merge-in-c.sql makes either the C build of this function (engine/sketch) or a copy
-- of it. Unit-form inputs: their keys sorted in C (past 64 keys in all), then kept or counted
-- as sketch_from_sorted_keys decides. Otherwise up to 64 keys in all: the inputs' pairs side by
-- side, unsorted. Otherwise the canonical merge.
create or replace function observability.sketch_merge_plpgsql
  (sketches observability.percentile_sketch[])
returns observability.percentile_sketch
language plpgsql immutable parallel safe as $$
declare
  small_limit constant integer := 64;
  s observability.percentile_sketch;
  total bigint := 0;
  lo float8;
  hi float8;
  unit boolean := true;
  ks integer[] := '{}';
  cs bigint[] := '{}';
begin
  if sketches is null then
    return null;
  end if;
  if pg_catalog.cardinality(sketches) = 1 then
    return sketches[1];
  end if;
  foreach s in array sketches loop
    if s.n is not null then
      ks := ks || s.keys;
      total := total + s.n;
      lo := least(lo, s.min_value);
      hi := greatest(hi, s.max_value);
      unit := unit and s.n = pg_catalog.cardinality(s.keys);
    end if;
  end loop;
  if total = 0 then
    return null;
  end if;
  if unit then
    if total <= small_limit then
      return row(total, lo, hi, ks, '{}'::bigint[])::observability.percentile_sketch;
    end if;
    return observability.sketch_from_sorted_keys(lo, hi, observability.sketch_sort_keys(ks));
  end if;
  if pg_catalog.cardinality(ks) > small_limit then
    return observability.sketch_combine(sketches);
  end if;
  foreach s in array sketches loop
    if s.n is null then
      continue;
    elsif pg_catalog.cardinality(s.counts) = 0 then
      cs := cs || pg_catalog.array_fill(1::bigint, array[pg_catalog.cardinality(s.keys)]);
    else
      cs := cs || s.counts;
    end if;
  end loop;
  return row(total, lo, hi, ks, cs)::observability.percentile_sketch;
end
$$;

-- percentile_agg()'s final function. Up to 64 rows a PL/pgSQL loop, as in 008, leaving the keys
-- in the unit form, unsorted; more rows are binned set-based, sorted in C, then kept or counted
-- as sketch_from_sorted_keys decides (instead of 008's hash aggregate of the keys).
create or replace function observability.sketch_from_values(vals float8[])
returns observability.percentile_sketch
language plpgsql immutable parallel safe as $$
declare
  small_limit constant integer := 64;
  v float8;
  lo float8;
  hi float8;
  ks integer[] := '{}';
begin
  if vals is null then
    return null;  -- no rows at all
  end if;
  if pg_catalog.cardinality(vals) > small_limit then
    select pg_catalog.array_agg(observability.sketch_bucket(x)), pg_catalog.min(x),
      pg_catalog.max(x)
    into ks, lo, hi
    from pg_catalog.unnest(vals) as x
    where observability.sketch_counts_value(x);
    return case when lo is not null then observability.sketch_from_sorted_keys(
      lo, hi, observability.sketch_sort_keys(ks)) end;
  end if;
  foreach v in array vals loop
    if observability.sketch_counts_value(v) then
      ks := ks || observability.sketch_bucket(v);
      lo := least(lo, v);
      hi := greatest(hi, v);
    end if;
  end loop;
  return case when lo is not null then row(
      pg_catalog.cardinality(ks), lo, hi, ks, '{}'::bigint[])::observability.percentile_sketch end;
end
$$;

-- The percentiles of qs, each interpolated between the neighbouring ranks as percentile_cont
-- does, from bucket values clamped to the exact minimum and maximum.
-- Only sketches of at most 64 keys can be unsorted (the small paths of sketch_from_values and
-- sketch_merge); larger ones come sorted from sketch_bin, sketch_combine and the unit merge, so
-- only the small ones are sorted here. In the unit form, rank r is key r. Otherwise a rank in
-- the upper half is found walking down from the last bucket: p95 and p99 lie a few buckets from
-- the top, not most of the sketch away from the bottom.
create or replace function observability.approx_percentile_array
  (qs float8[], sketch observability.percentile_sketch)
returns float8[]
language plpgsql immutable strict parallel safe as $$
declare
  small_limit constant integer := 64;
  s observability.percentile_sketch := sketch;
  ks integer[] := s.keys;
  cs bigint[] := s.counts;
  m integer := pg_catalog.cardinality(s.keys);
  total bigint := s.n;
  i integer;
  j integer;
  k integer;
  c bigint;
  pos integer := 0;       -- walking up: the bucket holding the rank looked for last
  running bigint := 0;    -- values in buckets 1 .. pos
  top integer;            -- walking down: the bucket holding the rank looked for last
  above bigint;           -- values in buckets top .. m
  q float8;
  h float8;
  target bigint;
  b integer;
  v float8;
  lo float8;
  hi float8;
  result float8[] := '{}';
begin
  if m = total then
    if m <= small_limit then
      ks := observability.sketch_sort_keys(ks);
    end if;
  elsif m <= small_limit then
    for i in 2..m loop
      if ks[i] < ks[i - 1] then
        k := ks[i];
        c := cs[i];
        j := i - 1;
        while j >= 1 and ks[j] > k loop
          ks[j + 1] := ks[j];
          cs[j + 1] := cs[j];
          j := j - 1;
        end loop;
        ks[j + 1] := k;
        cs[j + 1] := c;
      end if;
    end loop;
  end if;
  foreach q in array qs loop
    if q is null then
      result := result || null::float8;
      continue;
    end if;
    if not (q between 0 and 1) then
      raise exception using errcode = '22003',
        message = 'approx_percentile: percentiles must be between 0 and 1, got ' || q;
    end if;
    h := q * (total - 1);
    if m = total then
      target := pg_catalog.floor(h) + 1;
      lo := case target when 1 then s.min_value when total then s.max_value
        else observability.sketch_bucket_value(ks[target]) end;
      target := pg_catalog.ceil(h) + 1;
      hi := case target when 1 then s.min_value when total then s.max_value
        else observability.sketch_bucket_value(ks[target]) end;
      result := result
        || greatest(s.min_value, least(s.max_value, lo + (h - pg_catalog.floor(h)) * (hi - lo)));
      continue;
    end if;
    for side in 0..1 loop
      target := case when side = 0 then pg_catalog.floor(h) else pg_catalog.ceil(h) end + 1;
      if 2 * target <= total then
        if pos > 0 and target <= running - cs[pos] then
          pos := 0;
          running := 0;
        end if;
        while running < target loop
          pos := pos + 1;
          running := running + cs[pos];
        end loop;
        b := pos;
      else
        -- the bucket b with (values in b + 1 .. m) < total - target + 1 <= (values in b .. m);
        -- walking on down from the last one found is right while it lies above b
        if top is null or above - cs[top] >= total - target + 1 then
          top := m + 1;
          above := 0;
        end if;
        while above < total - target + 1 loop
          top := top - 1;
          above := above + cs[top];
        end loop;
        b := top;
      end if;
      -- the smallest and largest values are known exactly
      v := case target
        when 1 then s.min_value
        when total then s.max_value
        else observability.sketch_bucket_value(ks[b])
      end;
      if side = 0 then
        lo := v;
      else
        hi := v;
      end if;
    end loop;
    result := result
      || greatest(s.min_value, least(s.max_value, lo + (h - pg_catalog.floor(h)) * (hi - lo)));
  end loop;
  return result;
end
$$;

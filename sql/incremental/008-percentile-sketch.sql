-- The project's own mergeable percentile sketch, with the names and roles of
-- timescaledb_toolkit's: percentile_agg(value) -> sketch, rollup(sketch) -> sketch,
-- approx_percentile(q, sketch) and approx_percentile_array(qs, sketch). The rollups use it
-- where the toolkit is absent (the embedded engine, the plain timescale/timescaledb image);
-- 009-percentile-sketch-choice.sql decides.
--
-- Values fall into logarithmic buckets of ratio gamma = 1.01, so a bucket's representative
-- value is within (gamma - 1) / (gamma + 1) ~ 0.5 % of every value in it. Buckets merge by
-- adding counts, so rollups of rollups lose nothing more. NULL, NaN and infinite values are not
-- counted; zero has its own bucket and negative values mirror positive ones.
--
-- Speed: the state function is the built-in array_append (a PL/pgSQL state function was ten
-- times slower) and all binning happens once per group, in the final function. The SQL helper
-- functions are not STRICT, so that the planner can inline them (STRICT made hourly refreshes
-- four times slower). The bucket layout is stored in materialized rollups: it must never change
-- in place.

create type observability.percentile_sketch as
( n bigint              -- values counted
, min_value float8
, max_value float8
, keys integer[]        -- bucket keys: 0 for zero, +/- (1 + offset + index) by sign
, counts bigint[]       -- values per key, aligned with keys
);

create function observability.sketch_bucket(v float8) returns integer
language sql immutable parallel safe as $$
  select case
    when v = 0 then 0
    when v > 0 then 1 + 1100000
      + pg_catalog.ceil(pg_catalog.ln(v) / pg_catalog.ln(1.01::float8))::integer
    else -(1 + 1100000
      + pg_catalog.ceil(pg_catalog.ln(-v) / pg_catalog.ln(1.01::float8))::integer)
  end
$$;

-- The representative value of a bucket (gamma^(i-1), gamma^i]: 2 gamma^i / (gamma + 1), the
-- point whose largest relative distance to the bucket's values is smallest.
create function observability.sketch_bucket_value(k integer) returns float8
language sql immutable parallel safe as $$
  select case
    when k = 0 then 0::float8
    when k > 0 then 2 * pg_catalog.power(1.01::float8, k - 1 - 1100000) / 2.01
    else -2 * pg_catalog.power(1.01::float8, -k - 1 - 1100000) / 2.01
  end
$$;

-- Canonical sketches: sorted, distinct keys. Set-based SQL, fast per value but with a fixed cost
-- per call of a few tens of microseconds (the SQL function executor), which dominates when a
-- group holds a handful of values, as hourly rows per user or knowledge base do.
create function observability.sketch_bin(vals float8[])
returns observability.percentile_sketch
language sql immutable parallel safe as $$
  select case when pg_catalog.sum(b.c) is null then null else row(
      pg_catalog.sum(b.c)::bigint, pg_catalog.min(b.lo), pg_catalog.max(b.hi),
      pg_catalog.array_agg(b.k order by b.k), pg_catalog.array_agg(b.c order by b.k)
    )::observability.percentile_sketch end
  from (
    select observability.sketch_bucket(v) as k, pg_catalog.count(*) as c,
           pg_catalog.min(v) as lo, pg_catalog.max(v) as hi
    from pg_catalog.unnest(vals) as v
    where v is not null and v <> 'NaN'::float8
      and v not in ('Infinity'::float8, '-Infinity'::float8)
    group by 1
  ) as b
$$;

create function observability.sketch_combine(sketches observability.percentile_sketch[])
returns observability.percentile_sketch
language sql immutable parallel safe as $$
  select case when pg_catalog.sum(b.c) is null then null else row(
      pg_catalog.sum(b.c)::bigint,
      (select pg_catalog.min((s).min_value) from pg_catalog.unnest(sketches) as s),
      (select pg_catalog.max((s).max_value) from pg_catalog.unnest(sketches) as s),
      pg_catalog.array_agg(b.k order by b.k), pg_catalog.array_agg(b.c order by b.k)
    )::observability.percentile_sketch end
  from (
    select u.k, pg_catalog.sum(u.c)::bigint as c
    from pg_catalog.unnest(sketches) as s,
         lateral rows from (pg_catalog.unnest((s).keys), pg_catalog.unnest((s).counts)) as u(k, c)
    where s is not null
    group by u.k
  ) as b
$$;

-- The final functions. Up to small_limit keys they loop in PL/pgSQL (a few microseconds per
-- call) and leave the keys unsorted and possibly repeated, one count each: a valid sketch that
-- approx_percentile and the canonical merge read the same way. Beyond that, they hand over to
-- the set-based functions above.
create function observability.sketch_from_values(vals float8[])
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
    return observability.sketch_bin(vals);
  end if;
  foreach v in array vals loop
    if v is not null and v <> 'NaN'::float8
       and v <> 'Infinity'::float8 and v <> '-Infinity'::float8 then
      ks := ks || observability.sketch_bucket(v);
      lo := least(lo, v);
      hi := greatest(hi, v);
    end if;
  end loop;
  return case when lo is not null then row(
      pg_catalog.cardinality(ks), lo, hi, ks,
      pg_catalog.array_fill(1::bigint, array[pg_catalog.cardinality(ks)])
    )::observability.percentile_sketch end;
end
$$;

create function observability.sketch_merge(sketches observability.percentile_sketch[])
returns observability.percentile_sketch
language plpgsql immutable parallel safe as $$
declare
  small_limit constant integer := 64;
  s observability.percentile_sketch;
  total bigint := 0;
  lo float8;
  hi float8;
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
      cs := cs || s.counts;
      total := total + s.n;
      lo := least(lo, s.min_value);
      hi := greatest(hi, s.max_value);
      if pg_catalog.cardinality(ks) > small_limit then
        return observability.sketch_combine(sketches);
      end if;
    end if;
  end loop;
  return case when total > 0 then
    row(total, lo, hi, ks, cs)::observability.percentile_sketch end;
end
$$;

-- sspace (the planner's guess of the state size) is set high on purpose: array_append keeps
-- each group's array in a memory context of its own, and hash aggregation, which holds every
-- group at once, ran up to ten times slower than sorting and aggregating one group at a time.
create aggregate observability.percentile_agg(float8)
( sfunc = pg_catalog.array_append
, stype = float8[]
, finalfunc = observability.sketch_from_values
, sspace = 1000000
);

create aggregate observability.rollup(observability.percentile_sketch)
( sfunc = pg_catalog.array_append
, stype = observability.percentile_sketch[]
, finalfunc = observability.sketch_merge
, sspace = 1000000
);

-- The values at fractions qs of the counted values, each interpolated between the neighbouring
-- ranks as percentile_cont does, from bucket values clamped to the exact minimum and maximum
-- (which also stand for the first and the last rank).
-- PL/pgSQL, because it reads the sketch once: every field access in a SQL function decompressed
-- the stored sketch again, and one pass over the buckets serves all of qs.
create function observability.approx_percentile_array
  (qs float8[], sketch observability.percentile_sketch)
returns float8[]
language plpgsql immutable strict parallel safe as $$
declare
  s observability.percentile_sketch := sketch;
  ks integer[] := s.keys;
  cs bigint[] := s.counts;
  m integer := pg_catalog.cardinality(s.keys);
  i integer;
  j integer;
  k integer;
  c bigint;
  pos integer := 0;       -- the bucket holding the rank looked for last
  running bigint := 0;    -- values in buckets 1 .. pos
  q float8;
  h float8;
  target bigint;
  v float8;
  lo float8;
  hi float8;
  result float8[] := '{}';
begin
  -- Small sketches from the PL/pgSQL paths may be unsorted: insertion sort, for few keys.
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
  foreach q in array qs loop
    if q is null then
      result := result || null::float8;
      continue;
    end if;
    if not (q between 0 and 1) then
      raise exception using errcode = '22003',
        message = 'approx_percentile: percentiles must be between 0 and 1, got ' || q;
    end if;
    h := q * (s.n - 1);
    -- ranks floor(h) + 1 and ceil(h) + 1, found by walking the buckets from the last position
    -- (from the start when the rank lies before it)
    for side in 0..1 loop
      target := case when side = 0 then pg_catalog.floor(h) else pg_catalog.ceil(h) end + 1;
      if pos > 0 and target <= running - cs[pos] then
        pos := 0;
        running := 0;
      end if;
      while running < target loop
        pos := pos + 1;
        running := running + cs[pos];
      end loop;
      -- the smallest and largest values are known exactly
      v := case target
        when 1 then s.min_value
        when s.n then s.max_value
        else observability.sketch_bucket_value(ks[pos])
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

create function observability.approx_percentile
  (q float8, sketch observability.percentile_sketch)
returns float8
language sql immutable parallel safe as $$
  select (observability.approx_percentile_array(array[q], sketch))[1]
$$;

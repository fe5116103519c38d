-- A faster approx_percentile_array for the project's percentile sketch
-- (sql/incremental/008-percentile-sketch.sql), with the same results: the bucket layout and the
-- sketch type are unchanged. Daily and weekly rollups read p50/p95/p99 from every merged sketch
-- when they are refreshed, and so does observability.metrics for hourly rows; on the embedded
-- engine, where PL/pgSQL runs several times slower than on a native server, the 008 version's
-- walks over every bucket took a quarter of a weekly refresh.

-- The percentiles of qs, each interpolated between the neighbouring ranks as percentile_cont
-- does, from bucket values clamped to the exact minimum and maximum.
-- Only sketches of at most 64 keys can be unsorted (the small paths of sketch_from_values and
-- sketch_merge); larger ones come sorted from sketch_bin and sketch_combine, so only the small
-- ones are sorted here. A rank in the upper half is found walking down from the last bucket:
-- p95 and p99 lie a few buckets from the top, not most of the sketch away from the bottom.
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
  if m <= small_limit then
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

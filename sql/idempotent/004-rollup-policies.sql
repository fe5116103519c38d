-- Refresh policies of the rollups, real-time aggregation per level, and the compression and
-- retention policies of the raw hypertables. Re-run on every install: a policy whose settings
-- differ from the ones below is altered in place (its job id and statistics stay).
--
-- Refresh windows. A policy refreshes the buckets that lie wholly inside
-- [now - start_offset, now - end_offset]; unchanged buckets cost nothing, so a wide window only
-- costs when late rows arrive.
--   hourly  [now - 3 days, now], every 5 minutes. Picks up rows up to 3 days late; the last
--           complete hour is materialized within 5 minutes of its end (the materialized data
--           never lags more than one bucket plus 5 minutes). Older late rows need a backfill
--           (an explicit refresh_continuous_aggregate), which must stay inside the retention
--           horizon like every window here.
--   daily   [now - 5 days, now - 1 hour], every hour. Covers every day the hourly window can
--           change (3 days, plus the day it starts in). The hour of delay lets the hourly level
--           materialize the last hour of a day before that day is rolled up.
--   weekly  [now - 3 weeks, now - 1 day], every 6 hours. Covers every week the daily window can
--           change (5 days, plus the week they start in) and at least two weeks.
-- Only the hourly level reads raw rows; the default raw retention (30 days) is ten times its
-- window, and apply_raw_data_policies() refuses a retention that would reach into it.
--
-- Real-time aggregation (materialized_only = false) at every level, deliberately:
--   hourly  dashboards see the current hour; the real-time part aggregates only raw rows newer
--           than the watermark, at most about an hour of them.
--   daily   today is visible, rolled up at query time from the hourly rows since midnight
--           (at most 25 hours of hourly rows per group).
--   weekly  the current week is visible, rolled up from at most 8 days of daily rows.
-- So a bucket reads the same at every granularity, complete or not. The metrics_aggregates sync
-- copies a still-open bucket as it stands when a window reaches into it; the next scheduled
-- run, which covers the latest complete buckets, rewrites it once it is complete.

create or replace function observability.ensure_refresh_policy
  (target regclass, start_offset interval, end_offset interval, schedule_interval interval)
returns integer
language plpgsql as $$
declare
  found_job integer;
  found_config jsonb;
  found_schedule interval;
  wanted jsonb;
begin
  select j.job_id, j.config, j.schedule_interval
  into found_job, found_config, found_schedule
  from timescaledb_information.jobs as j
  where j.proc_name = 'policy_refresh_continuous_aggregate'
    and pg_catalog.format('%I.%I', j.hypertable_schema, j.hypertable_name)::regclass = target;
  if found_job is null then
    return public.add_continuous_aggregate_policy(target, start_offset => start_offset,
      end_offset => end_offset, schedule_interval => schedule_interval);
  end if;
  wanted := found_config || pg_catalog.jsonb_build_object(
    'start_offset', start_offset::text, 'end_offset', end_offset::text);
  if (found_config ->> 'start_offset')::interval is distinct from start_offset
     or (found_config ->> 'end_offset')::interval is distinct from end_offset
     or found_schedule is distinct from schedule_interval then
    perform public.alter_job(found_job, schedule_interval => schedule_interval,
      config => wanted);
  end if;
  return found_job;
end
$$;

-- The hourly rollups' refresh window, the oldest raw data a policy refresh reads.
create or replace function observability.raw_refresh_horizon() returns interval
language sql stable as $$
  select pg_catalog.max((j.config ->> 'start_offset')::interval)
  from timescaledb_information.jobs as j
  where j.proc_name = 'policy_refresh_continuous_aggregate'
    and j.hypertable_schema = 'observability'
    and pg_catalog.format('%I.%I', j.hypertable_schema, j.hypertable_name)::regclass in
      (select r.rollup from observability.rollups as r where r.granularity = 'hour')
$$;

-- Compression and retention of the raw hypertables (traces, spans, span_events,
-- document_events). Arguments left NULL keep the current setting; a table without a policy yet
-- takes that of spans (span_events, added later, so lives as long as its spans), or on first
-- install the default: retention 30 days, compression after 2 days. Changed values are applied
-- in place.
-- At install time the custom settings observability.raw_retention and
-- observability.raw_compress_after are passed in when set, e.g.
--   PGOPTIONS='-c observability.raw_retention=90d' python -m worker migrate
-- The rollups themselves are kept for ever.
create or replace function observability.apply_raw_data_policies
  (retention interval default null, compress_after interval default null)
returns void
language plpgsql as $$
declare
  raw_table regclass;
  job record;
  wanted_retention interval;
  wanted_compress_after interval;
  horizon interval := observability.raw_refresh_horizon();
  spans_retention interval;
  spans_compress_after interval;
begin
  select (j.config ->> 'drop_after')::interval into spans_retention
  from timescaledb_information.jobs as j
  where j.proc_name = 'policy_retention'
    and j.hypertable_schema = 'observability' and j.hypertable_name = 'spans';
  select (j.config ->> 'compress_after')::interval into spans_compress_after
  from timescaledb_information.jobs as j
  where j.proc_name = 'policy_compression'
    and j.hypertable_schema = 'observability' and j.hypertable_name = 'spans';
  foreach raw_table in array array[
    'observability.traces', 'observability.spans', 'observability.span_events',
    'observability.document_events'
  ]::regclass[] loop
    select j.job_id, j.config into job
    from timescaledb_information.jobs as j
    where j.proc_name = 'policy_retention'
      and pg_catalog.format('%I.%I', j.hypertable_schema, j.hypertable_name)::regclass
        = raw_table;
    wanted_retention := coalesce(retention, (job.config ->> 'drop_after')::interval,
      spans_retention, interval '30 days');
    select j.job_id, j.config into job
    from timescaledb_information.jobs as j
    where j.proc_name = 'policy_compression'
      and pg_catalog.format('%I.%I', j.hypertable_schema, j.hypertable_name)::regclass
        = raw_table;
    wanted_compress_after := coalesce(compress_after,
      (job.config ->> 'compress_after')::interval, spans_compress_after, interval '2 days');

    if wanted_retention <= horizon + interval '1 day' then
      raise exception 'raw data retention % is too short for %', wanted_retention, raw_table
        using detail = pg_catalog.format('The hourly rollups refresh the last %s of raw rows; '
          'retention must exceed that by more than a day, or refreshes would delete rolled-up '
          'rows of dropped data.', horizon);
    end if;
    if wanted_compress_after <= interval '0' or wanted_compress_after >= wanted_retention then
      raise exception 'compression after % must be positive and less than the retention %',
        wanted_compress_after, wanted_retention;
    end if;

    perform observability.set_policy(raw_table, 'policy_compression', 'compress_after',
      wanted_compress_after);
    perform observability.set_policy(raw_table, 'policy_retention', 'drop_after',
      wanted_retention);
  end loop;
end
$$;

-- Add the compression or retention policy of a hypertable, or alter its age setting in place.
create or replace function observability.set_policy
  (hypertable regclass, proc text, age_key text, age interval)
returns integer
language plpgsql as $$
declare
  found_job integer;
  found_config jsonb;
begin
  select j.job_id, j.config into found_job, found_config
  from timescaledb_information.jobs as j
  where j.proc_name = proc
    and pg_catalog.format('%I.%I', j.hypertable_schema, j.hypertable_name)::regclass
      = hypertable;
  if found_job is null then
    if proc = 'policy_retention' then
      return public.add_retention_policy(hypertable, drop_after => age);
    end if;
    return public.add_compression_policy(hypertable, compress_after => age);
  end if;
  if (found_config ->> age_key)::interval is distinct from age then
    perform public.alter_job(found_job,
      config => found_config || pg_catalog.jsonb_build_object(age_key, age::text));
  end if;
  return found_job;
end
$$;

-- Every rollup answers queries in real time (materialized buckets plus raw rows past them).
do $$
declare
  rollup regclass;
begin
  for rollup in select r.rollup from observability.rollups as r loop
    execute pg_catalog.format(
      'alter materialized view %s set (timescaledb.materialized_only = false)', rollup);
  end loop;
end
$$;

-- Refresh windows and schedules per level, from the granularity catalogue.
select observability.ensure_refresh_policy(r.rollup, g.refresh_start_offset,
  g.refresh_end_offset, g.refresh_schedule)
from observability.rollups as r
join observability.granularities as g on g.name = r.granularity;

select observability.apply_raw_data_policies(
  nullif(pg_catalog.current_setting('observability.raw_retention', true), '')::interval,
  nullif(pg_catalog.current_setting('observability.raw_compress_after', true), '')::interval
);

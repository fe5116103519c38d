-- Relations the Grafana dashboards (dashboards/*.json) read besides observability.metrics,
-- rebuilt on every install. They run as the read-only dashboard role, which has SELECT on the
-- observability schema only: anything from the TimescaleDB catalog is read through a view here.

-- One row per metric and dimension value over a time range, merged from the hourly sketches:
-- totals and percentiles of a whole range (per-knowledge-base and per-user tables, stat
-- panels). Hourly buckets starting in [from_time, to_time) are used, so a range that does not
-- start on the hour leaves out the hour it starts in. Rows shaped like observability.metrics
-- without bucket and granularity.
create or replace function observability.metrics_over_range
  (from_time timestamptz, to_time timestamptz)
returns table
( metric_type text, dimension_type text, dimension_value text, count bigint, sum float8
, min float8, max float8, avg float8, p50 float8, p95 float8, p99 float8
)
language sql stable parallel safe as $$
  select d.metric_type, d.dimension_type, d.dimension_value,
    d.count, d.sum, d.min, d.max, d.sum / nullif(d.count, 0),
    p.percentiles[1], p.percentiles[2], p.percentiles[3]
  from (
    select s.metric_type, s.dimension_type, s.dimension_value,
      pg_catalog.sum(s.count)::bigint as count, pg_catalog.sum(s.sum) as sum,
      pg_catalog.min(s.min) as min, pg_catalog.max(s.max) as max,
      @sketch_schema@.rollup(s.sketch) as sketch
    from observability.metric_sketches as s
    where s.granularity = 'hour' and s.bucket >= from_time and s.bucket < to_time
    group by 1, 2, 3
  ) as d
  cross join lateral
    @sketch_schema@.approx_percentile_array(array[0.5, 0.95, 0.99], d.sketch) as p (percentiles)
  where d.count > 0
$$;

-- Freshness of every rollup: how far its materialized part lags behind now, and how its
-- refresh policy is doing. watermark is where the materialized part ends (real-time
-- aggregation covers the rest); NULL when nothing was materialized yet. TimescaleDB's job
-- statistics say -infinity for "not set" (the last successful finish of a job that never
-- succeeded, the last start of a job rescheduled before its first run, the next start of a
-- running job), which clients cannot load: NULL here.
create or replace view observability.rollup_freshness as
select
  c.view_name::text as rollup,
  -- a continuous aggregate outside the catalogue (one of your own) is listed as its own source,
  -- without a granularity
  coalesce(r.source, c.view_name::text) as source,
  r.granularity,
  w.watermark,
  -- 0, not negative, when buckets dated ahead of the clock were materialized (python -m
  -- worker status names them); NULL when nothing was materialized
  case when w.watermark > pg_catalog.now() then 0
    else pg_catalog.date_part('epoch', pg_catalog.now() - w.watermark)::float8
  end as lag_seconds,
  j.job_id,
  j.schedule_interval,
  s.last_run_status,
  case when pg_catalog.isfinite(s.last_run_started_at) then s.last_run_started_at end
    as last_run_started_at,
  case when pg_catalog.isfinite(s.last_successful_finish) then s.last_successful_finish end
    as last_successful_finish,
  case when pg_catalog.isfinite(s.next_start) then s.next_start end as next_start,
  coalesce(s.total_runs, 0)::bigint as total_runs,
  coalesce(s.total_failures, 0)::bigint as total_failures
from timescaledb_information.continuous_aggregates as c
-- source and granularity from the catalogue (sql/idempotent/003-rollup-views.sql)
left join observability.rollups as r
  on r.rollup = pg_catalog.format('%I.%I', c.view_schema, c.view_name)::regclass
join _timescaledb_catalog.hypertable as h
  on h.schema_name = c.materialization_hypertable_schema
  and h.table_name = c.materialization_hypertable_name
cross join lateral (
  -- an empty rollup's watermark is the lowest timestamp there is
  select case when x.watermark > '1900-01-01'::timestamptz and pg_catalog.isfinite(x.watermark)
    then x.watermark end as watermark
  from (
    select _timescaledb_functions.to_timestamp(_timescaledb_functions.cagg_watermark(h.id))
      as watermark
  ) as x
) as w
left join timescaledb_information.jobs as j
  on j.proc_name = 'policy_refresh_continuous_aggregate'
  and j.hypertable_schema = c.view_schema
  and j.hypertable_name = c.view_name
left join timescaledb_information.job_stats as s on s.job_id = j.job_id
where c.view_schema = 'observability';

comment on function observability.metrics_over_range(timestamptz, timestamptz) is
  'Totals and p50/p95/p99 per metric and dimension value over the hourly buckets starting in '
  '[from_time, to_time), merged from the hourly sketches.';
comment on view observability.rollup_freshness is
  'Per continuous aggregate: materialization watermark, lag behind now and refresh job health.';

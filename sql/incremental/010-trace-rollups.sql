-- Trace rollups: continuous aggregates by hour over observability.traces, by day as a rollup of
-- the hours and by week (Monday 00:00 UTC, as time_bucket does) as a rollup of the days.
--
-- One row per bucket and dimension value: each trace is counted once for the whole
-- ('overall', ''), once for its operation type, once for its knowledge base and once for its
-- user. A trace without a knowledge base or a user is counted only in the first two. One
-- aggregate for all dimensions means one scan of the raw rows per refresh, and views of one
-- shape; grouping by all dimensions at once instead would give about one row per trace.
--
-- Daily and weekly rows also store p50, p95 and p99 (<metric>_percentiles), read from the
-- rolled-up sketch at refresh time, so that dashboards over days and weeks read numbers instead
-- of walking sketches. Hourly rows do not: there are far more of them (extracting the
-- percentiles doubled the hourly refresh time), and queries over hours read few of them.
--
-- Created WITH NO DATA: the refresh policies (sql/idempotent/004-rollup-policies.sql) fill
-- them. Real-time aggregation is on at every level; the reasons are in that file.

create materialized view observability.traces_hourly
with (timescaledb.continuous, timescaledb.materialized_only = false) as
select
  public.time_bucket(interval '1 hour', t.started_at) as bucket,
  d.dimension_type,
  d.dimension_value,
  pg_catalog.count(*) as trace_count,
  pg_catalog.count(*) filter (where t.status = 'error') as error_count,
  pg_catalog.count(t.duration_ms) as duration_count,
  pg_catalog.sum(t.duration_ms) as duration_sum,
  pg_catalog.min(t.duration_ms) as duration_min,
  pg_catalog.max(t.duration_ms) as duration_max,
  pg_catalog.avg(t.duration_ms)::float8 as duration_avg,
  @sketch_schema@.percentile_agg(t.duration_ms::float8) as duration_sketch,
  pg_catalog.count(t.total_tokens) as total_tokens_count,
  pg_catalog.sum(t.total_tokens) as total_tokens_sum,
  pg_catalog.min(t.total_tokens) as total_tokens_min,
  pg_catalog.max(t.total_tokens) as total_tokens_max,
  pg_catalog.avg(t.total_tokens)::float8 as total_tokens_avg,
  @sketch_schema@.percentile_agg(t.total_tokens::float8) as total_tokens_sketch,
  pg_catalog.count(t.cost_usd) as cost_count,
  pg_catalog.sum(t.cost_usd) as cost_sum,
  pg_catalog.min(t.cost_usd) as cost_min,
  pg_catalog.max(t.cost_usd) as cost_max
from observability.traces as t
cross join lateral (
  values
    ('overall', ''),
    ('operation_type', t.operation_type),
    ('kb', t.kb_id::text),
    ('user', t.user_id::text)
) as d (dimension_type, dimension_value)
where d.dimension_value is not null
group by 1, 2, 3
with no data;

create materialized view observability.traces_daily
with (timescaledb.continuous, timescaledb.materialized_only = false) as
select
  public.time_bucket(interval '1 day', h.bucket) as bucket,
  h.dimension_type,
  h.dimension_value,
  pg_catalog.sum(h.trace_count)::bigint as trace_count,
  pg_catalog.sum(h.error_count)::bigint as error_count,
  pg_catalog.sum(h.duration_count)::bigint as duration_count,
  pg_catalog.sum(h.duration_sum)::bigint as duration_sum,
  pg_catalog.min(h.duration_min) as duration_min,
  pg_catalog.max(h.duration_max) as duration_max,
  pg_catalog.sum(h.duration_sum)::float8
    / nullif(pg_catalog.sum(h.duration_count), 0)::float8 as duration_avg,
  @sketch_schema@.rollup(h.duration_sketch) as duration_sketch,
  pg_catalog.sum(h.total_tokens_count)::bigint as total_tokens_count,
  pg_catalog.sum(h.total_tokens_sum)::bigint as total_tokens_sum,
  pg_catalog.min(h.total_tokens_min) as total_tokens_min,
  pg_catalog.max(h.total_tokens_max) as total_tokens_max,
  pg_catalog.sum(h.total_tokens_sum)::float8
    / nullif(pg_catalog.sum(h.total_tokens_count), 0)::float8 as total_tokens_avg,
  @sketch_schema@.rollup(h.total_tokens_sketch) as total_tokens_sketch,
  pg_catalog.sum(h.cost_count)::bigint as cost_count,
  pg_catalog.sum(h.cost_sum) as cost_sum,
  pg_catalog.min(h.cost_min) as cost_min,
  pg_catalog.max(h.cost_max) as cost_max,
  @sketch_schema@.approx_percentile_array(array[0.5, 0.95, 0.99],
    @sketch_schema@.rollup(h.duration_sketch)) as duration_percentiles,
  @sketch_schema@.approx_percentile_array(array[0.5, 0.95, 0.99],
    @sketch_schema@.rollup(h.total_tokens_sketch)) as total_tokens_percentiles
from observability.traces_hourly as h
group by 1, 2, 3
with no data;

create materialized view observability.traces_weekly
with (timescaledb.continuous, timescaledb.materialized_only = false) as
select
  public.time_bucket(interval '1 week', d.bucket) as bucket,
  d.dimension_type,
  d.dimension_value,
  pg_catalog.sum(d.trace_count)::bigint as trace_count,
  pg_catalog.sum(d.error_count)::bigint as error_count,
  pg_catalog.sum(d.duration_count)::bigint as duration_count,
  pg_catalog.sum(d.duration_sum)::bigint as duration_sum,
  pg_catalog.min(d.duration_min) as duration_min,
  pg_catalog.max(d.duration_max) as duration_max,
  pg_catalog.sum(d.duration_sum)::float8
    / nullif(pg_catalog.sum(d.duration_count), 0)::float8 as duration_avg,
  @sketch_schema@.rollup(d.duration_sketch) as duration_sketch,
  pg_catalog.sum(d.total_tokens_count)::bigint as total_tokens_count,
  pg_catalog.sum(d.total_tokens_sum)::bigint as total_tokens_sum,
  pg_catalog.min(d.total_tokens_min) as total_tokens_min,
  pg_catalog.max(d.total_tokens_max) as total_tokens_max,
  pg_catalog.sum(d.total_tokens_sum)::float8
    / nullif(pg_catalog.sum(d.total_tokens_count), 0)::float8 as total_tokens_avg,
  @sketch_schema@.rollup(d.total_tokens_sketch) as total_tokens_sketch,
  pg_catalog.sum(d.cost_count)::bigint as cost_count,
  pg_catalog.sum(d.cost_sum) as cost_sum,
  pg_catalog.min(d.cost_min) as cost_min,
  pg_catalog.max(d.cost_max) as cost_max,
  @sketch_schema@.approx_percentile_array(array[0.5, 0.95, 0.99],
    @sketch_schema@.rollup(d.duration_sketch)) as duration_percentiles,
  @sketch_schema@.approx_percentile_array(array[0.5, 0.95, 0.99],
    @sketch_schema@.rollup(d.total_tokens_sketch)) as total_tokens_percentiles
from observability.traces_daily as d
group by 1, 2, 3
with no data;

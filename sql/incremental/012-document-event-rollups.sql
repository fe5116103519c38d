-- Document processing rollups: continuous aggregates by hour over observability.document_events,
-- by day as a rollup of the hours and by week (Monday 00:00 UTC) as a rollup of the days.
-- Each event is counted for the whole ('overall', '') and for its processing step (event_type:
-- upload, parse, chunk, embed, index, ...); failures are the events with status 'error'.

create materialized view observability.document_events_hourly
with (timescaledb.continuous, timescaledb.materialized_only = false) as
select
  public.time_bucket(interval '1 hour', e.created_at) as bucket,
  d.dimension_type,
  d.dimension_value,
  pg_catalog.count(*) as event_count,
  pg_catalog.count(*) filter (where e.status = 'error') as error_count,
  pg_catalog.count(e.duration_ms) as duration_count,
  pg_catalog.sum(e.duration_ms) as duration_sum,
  pg_catalog.min(e.duration_ms) as duration_min,
  pg_catalog.max(e.duration_ms) as duration_max,
  pg_catalog.avg(e.duration_ms)::float8 as duration_avg,
  @sketch_schema@.percentile_agg(e.duration_ms::float8) as duration_sketch
from observability.document_events as e
cross join lateral (
  values
    ('overall', ''),
    ('event_type', e.event_type)
) as d (dimension_type, dimension_value)
group by 1, 2, 3
with no data;

create materialized view observability.document_events_daily
with (timescaledb.continuous, timescaledb.materialized_only = false) as
select
  public.time_bucket(interval '1 day', h.bucket) as bucket,
  h.dimension_type,
  h.dimension_value,
  pg_catalog.sum(h.event_count)::bigint as event_count,
  pg_catalog.sum(h.error_count)::bigint as error_count,
  pg_catalog.sum(h.duration_count)::bigint as duration_count,
  pg_catalog.sum(h.duration_sum)::bigint as duration_sum,
  pg_catalog.min(h.duration_min) as duration_min,
  pg_catalog.max(h.duration_max) as duration_max,
  pg_catalog.sum(h.duration_sum)::float8
    / nullif(pg_catalog.sum(h.duration_count), 0)::float8 as duration_avg,
  @sketch_schema@.rollup(h.duration_sketch) as duration_sketch,
  @sketch_schema@.approx_percentile_array(array[0.5, 0.95, 0.99],
    @sketch_schema@.rollup(h.duration_sketch)) as duration_percentiles
from observability.document_events_hourly as h
group by 1, 2, 3
with no data;

create materialized view observability.document_events_weekly
with (timescaledb.continuous, timescaledb.materialized_only = false) as
select
  public.time_bucket(interval '1 week', d.bucket) as bucket,
  d.dimension_type,
  d.dimension_value,
  pg_catalog.sum(d.event_count)::bigint as event_count,
  pg_catalog.sum(d.error_count)::bigint as error_count,
  pg_catalog.sum(d.duration_count)::bigint as duration_count,
  pg_catalog.sum(d.duration_sum)::bigint as duration_sum,
  pg_catalog.min(d.duration_min) as duration_min,
  pg_catalog.max(d.duration_max) as duration_max,
  pg_catalog.sum(d.duration_sum)::float8
    / nullif(pg_catalog.sum(d.duration_count), 0)::float8 as duration_avg,
  @sketch_schema@.rollup(d.duration_sketch) as duration_sketch,
  @sketch_schema@.approx_percentile_array(array[0.5, 0.95, 0.99],
    @sketch_schema@.rollup(d.duration_sketch)) as duration_percentiles
from observability.document_events_daily as d
group by 1, 2, 3
with no data;

-- Rolled-up statistics per time bucket, metric and dimension value. The aggregation worker
-- upserts into it with on conflict on metrics_aggregates_pkey.
--
-- NULL dimensions: dimension_type defaults to 'overall' and dimension_value is NOT NULL with ''
-- meaning "all values". We chose that over a NULLS NOT DISTINCT unique index because:
--   * the upsert key can then be the primary key, and primary key columns cannot be NULL;
--   * dashboards filter with plain "dimension_value = $1" (NULL would need IS NOT DISTINCT FROM);
--   * the ORM's identity map needs non-NULL key columns;
--   * it does not depend on how TimescaleDB copies index options onto chunks.
-- metrics_aggregates_dimension_value_matches_type keeps the sentinel unambiguous.
create table observability.metrics_aggregates
( bucket_time timestamptz not null
, granularity text not null
, metric_type text not null
, dimension_type text not null default 'overall'
, dimension_value text not null default ''
, count bigint not null
, sum_value double precision
, min_value double precision
, max_value double precision
, avg_value double precision
, p50_value double precision
, p95_value double precision
, p99_value double precision
, created_at timestamptz not null default pg_catalog.now()
, updated_at timestamptz not null default pg_catalog.now()
-- Key order: one series (metric, granularity, dimension) is read over a time range, so the
-- equality columns lead and bucket_time comes last. The upsert target is order-independent.
, constraint metrics_aggregates_pkey primary key
    (metric_type, granularity, dimension_type, dimension_value, bucket_time)
, constraint metrics_aggregates_granularity_valid check (granularity in ('hour', 'day', 'week'))
-- Buckets start on the hour, at midnight UTC, or on Monday midnight UTC (as time_bucket does).
-- The case yields NULL (passes) for an unknown granularity, which the check above rejects,
-- instead of date_trunc failing with a less helpful error.
, constraint metrics_aggregates_bucket_time_aligned check
    ( case granularity
        when 'hour' then pg_catalog.date_trunc('hour', bucket_time at time zone 'UTC')
        when 'day' then pg_catalog.date_trunc('day', bucket_time at time zone 'UTC')
        when 'week' then pg_catalog.date_trunc('week', bucket_time at time zone 'UTC')
      end = bucket_time at time zone 'UTC'
    )
, constraint metrics_aggregates_metric_type_format check
    (metric_type ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$')
, constraint metrics_aggregates_dimension_type_valid check
    (dimension_type in ('overall', 'operation_type', 'model', 'kb', 'user', 'provider'))
, constraint metrics_aggregates_dimension_value_matches_type check
    ((dimension_type = 'overall') = (dimension_value = ''))
, constraint metrics_aggregates_count_non_negative check (count >= 0)
, constraint metrics_aggregates_min_not_above_max check (min_value <= max_value)
, constraint metrics_aggregates_percentiles_ordered check
    (p50_value <= p95_value and p95_value <= p99_value)
, constraint metrics_aggregates_updated_at_not_before_created_at check (updated_at >= created_at)
);

select public.create_hypertable
( 'observability.metrics_aggregates'
, public.by_range('bucket_time', interval '7 days')
, create_default_indexes => false
, if_not_exists => true
);

-- Series reads and the worker's upsert: served by metrics_aggregates_pkey.
-- "Everything in these buckets" (a dashboard overview, the worker checking what it already
-- wrote for a period when backfilling).
create index metrics_aggregates_granularity_bucket_time_idx
  on observability.metrics_aggregates (granularity, bucket_time);

-- Views over the rollups (sql/incremental/010..012), rebuilt on every install.
--
--   *_rollups         the three levels of one source in one relation, with a granularity column
--                     (hour, day, week), the sketches (for rollups at query time) and the
--                     percentiles stored at day and week level;
--   metric_sketches   one row per bucket, metric and dimension value, with its sketch;
--   metrics           the same rows with plain numbers: count, sum, min, max, avg and p50, p95,
--                     p99. Dashboards read this view; its shape does not depend on which
--                     percentile sketch is installed.
--
-- Metrics: trace.duration_ms, trace.total_tokens, trace.cost_usd; llm.duration_ms,
-- llm.time_to_first_token_ms, llm.input_tokens, llm.output_tokens, llm.cost_usd (LLM spans);
-- document.duration_ms (document processing steps). For every source, <source>.errors treats
-- each row as an observation of 1 (status error) or 0: its count is the number of traces, spans
-- or events, its sum the number of errors and its avg the error rate. llm.cost_unknown does the
-- same for LLM spans without a cost (a model missing from observability.model_prices, or no
-- token counts): its sum counts them and its avg is the share of calls whose cost the cost sums
-- leave out; by model, it shows which models lack a price. Percentiles are NULL for
-- metrics without a sketch (tokens and cost of LLM spans, cost of traces, errors).
--
-- Dimensions: overall (dimension_value ''), operation_type, kb and user for traces; model and
-- provider for LLM spans; event_type (the processing step) for document events.

-- Every continuous aggregate: each source at each level of the granularity catalogue, named
-- <source>_<level>. The worker's mirror of the sources is ROLLUP_SOURCES in
-- worker/models/granularities.py.
create or replace view observability.rollups as
select s.source, g.name as granularity, g.position,
  pg_catalog.format('observability.%I', s.source || '_' || g.level)::regclass as rollup
from observability.granularities as g
cross join (values ('traces'), ('llm_spans'), ('document_events')) as s (source);

-- Hourly rows have no stored percentiles (see sql/incremental/010-trace-rollups.sql): NULL here.
create or replace view observability.traces_rollups as
select 'hour'::text as granularity, r.*,
  null::float8[] as duration_percentiles, null::float8[] as total_tokens_percentiles
from observability.traces_hourly as r
union all
select 'day'::text, r.* from observability.traces_daily as r
union all
select 'week'::text, r.* from observability.traces_weekly as r;

create or replace view observability.llm_spans_rollups as
select 'hour'::text as granularity, r.*,
  null::float8[] as duration_percentiles, null::float8[] as ttft_percentiles
from observability.llm_spans_hourly as r
union all
select 'day'::text, r.* from observability.llm_spans_daily as r
union all
select 'week'::text, r.* from observability.llm_spans_weekly as r;

create or replace view observability.document_events_rollups as
select 'hour'::text as granularity, r.*, null::float8[] as duration_percentiles
from observability.document_events_hourly as r
union all
select 'day'::text, r.* from observability.document_events_daily as r
union all
select 'week'::text, r.* from observability.document_events_weekly as r;

-- One row per rollup row and metric, with its sketch and, where stored, its percentiles. The
-- metrics are unpivoted with a lateral subquery rather than a UNION ALL of the rollups per
-- metric: planning a union of many real-time rollups took longer than answering the query, and
-- a query without a metric filter (the worker's sync) would read each rollup once per metric.
-- Filters on granularity, bucket and dimension still reach the rollups. The lateral subquery is
-- a UNION ALL of one-row selects, not a VALUES list: a filter on metric_type removes the other
-- metrics' selects when the query is planned, while a VALUES list compiled and evaluated every
-- row's expressions again for each rollup row (most of a dashboard query's run time on the
-- embedded engine).
--
-- A source's metrics with sketches each have a branch of their own (trace.total_tokens,
-- llm.time_to_first_token_ms) besides the branch of its other metrics, so that a query of one
-- of them reads and merges only that metric's sketches: the real-time part of a rollup computes
-- only the columns the query reads, and the lateral subquery reads every column it names (on
-- the embedded engine, merging today's time-to-first-token sketches for nothing was a sixth of
-- the dashboard query of python -m bench rollups). A query without a metric filter reads such a
-- source's rollups twice.
--
-- Each branch names its metric types in a constant column, metric_types, and the view keeps the
-- rows whose metric_type is one of them (all of them: the guard filters nothing). It is there
-- for the planner: a filter on metric_type (metric_type = 'llm.duration_ms', or an IN
-- list) contradicts the guard of the other branches, so they are dropped before they are
-- planned. Without it they were planned in full, real-time rollups and raw chunks included,
-- and only found empty when joined to their metric lists (on the embedded engine, about half of
-- the planning time of the dashboard query of python -m bench rollups). The planner sees the
-- constant only if a branch is a single subquery, so the join of rollup and metrics sits in one
-- that must not be flattened into the branch: the unused "with fence as (select)" keeps it apart
-- (a subquery with a WITH clause is never pulled up) and, unlike OFFSET 0, still lets filters on
-- bucket, granularity and dimension be pushed down into it.
create or replace view observability.metric_sketches as
select s.bucket, s.granularity, s.metric_type, s.dimension_type, s.dimension_value,
  s.count, s.sum, s.min, s.max, s.sketch, s.percentiles
from (
  select array['trace.duration_ms', 'trace.cost_usd', 'trace.errors'] as metric_types, b.*
  from (
    with fence as (select)
    select r.bucket, r.granularity, m.metric_type, r.dimension_type, r.dimension_value,
      m.count, m.sum, m.min, m.max, m.sketch, m.percentiles
    from observability.traces_rollups as r
    cross join lateral (
      select 'trace.duration_ms', r.duration_count, r.duration_sum::float8,
        r.duration_min::float8, r.duration_max::float8, r.duration_sketch, r.duration_percentiles
      union all
      select 'trace.cost_usd', r.cost_count, r.cost_sum::float8, r.cost_min::float8,
        r.cost_max::float8, null, null
      union all
      select 'trace.errors', r.trace_count, r.error_count::float8,
        (r.error_count = r.trace_count)::integer::float8, (r.error_count > 0)::integer::float8,
        null, null
    ) as m (metric_type, count, sum, min, max, sketch, percentiles)
  ) as b
  union all
  select array['trace.total_tokens'] as metric_types, b.*
  from (
    with fence as (select)
    select r.bucket, r.granularity, 'trace.total_tokens'::text, r.dimension_type, r.dimension_value,
      r.total_tokens_count, r.total_tokens_sum::float8, r.total_tokens_min::float8,
      r.total_tokens_max::float8, r.total_tokens_sketch, r.total_tokens_percentiles
    from observability.traces_rollups as r
  ) as b
  union all
  select array['llm.duration_ms', 'llm.input_tokens', 'llm.output_tokens', 'llm.cost_usd',
    'llm.errors', 'llm.cost_unknown'] as metric_types, b.*
  from (
    with fence as (select)
    select r.bucket, r.granularity, m.metric_type, r.dimension_type, r.dimension_value,
      m.count, m.sum, m.min, m.max, m.sketch, m.percentiles
    from observability.llm_spans_rollups as r
    cross join lateral (
      select 'llm.duration_ms', r.duration_count, r.duration_sum::float8,
        r.duration_min::float8, r.duration_max::float8, r.duration_sketch, r.duration_percentiles
      union all
      select 'llm.input_tokens', r.input_tokens_count, r.input_tokens_sum::float8,
        r.input_tokens_min::float8, r.input_tokens_max::float8, null, null
      union all
      select 'llm.output_tokens', r.output_tokens_count, r.output_tokens_sum::float8,
        r.output_tokens_min::float8, r.output_tokens_max::float8, null, null
      union all
      select 'llm.cost_usd', r.cost_count, r.cost_sum::float8, r.cost_min::float8,
        r.cost_max::float8, null, null
      union all
      select 'llm.errors', r.span_count, r.error_count::float8,
        (r.error_count = r.span_count)::integer::float8, (r.error_count > 0)::integer::float8,
        null, null
      union all
      select 'llm.cost_unknown', r.span_count, (r.span_count - r.cost_count)::float8,
        (r.cost_count = 0)::integer::float8, (r.cost_count < r.span_count)::integer::float8,
        null, null
    ) as m (metric_type, count, sum, min, max, sketch, percentiles)
  ) as b
  union all
  select array['llm.time_to_first_token_ms'] as metric_types, b.*
  from (
    with fence as (select)
    select r.bucket, r.granularity, 'llm.time_to_first_token_ms'::text, r.dimension_type,
      r.dimension_value, r.ttft_count, r.ttft_sum::float8, r.ttft_min::float8,
      r.ttft_max::float8, r.ttft_sketch, r.ttft_percentiles
    from observability.llm_spans_rollups as r
  ) as b
  union all
  select array['document.duration_ms', 'document.errors'] as metric_types, b.*
  from (
    with fence as (select)
    select r.bucket, r.granularity, m.metric_type, r.dimension_type, r.dimension_value,
      m.count, m.sum, m.min, m.max, m.sketch, m.percentiles
    from observability.document_events_rollups as r
    cross join lateral (
      select 'document.duration_ms', r.duration_count, r.duration_sum::float8,
        r.duration_min::float8, r.duration_max::float8, r.duration_sketch, r.duration_percentiles
      union all
      select 'document.errors', r.event_count, r.error_count::float8,
        (r.error_count = r.event_count)::integer::float8, (r.error_count > 0)::integer::float8,
        null, null
    ) as m (metric_type, count, sum, min, max, sketch, percentiles)
  ) as b
) as s
where s.metric_type = any(s.metric_types);

create or replace view observability.metrics as
select s.bucket, s.granularity, s.metric_type, s.dimension_type, s.dimension_value,
  s.count, s.sum, s.min, s.max, s.sum / nullif(s.count, 0) as avg,
  p.percentiles[1] as p50, p.percentiles[2] as p95, p.percentiles[3] as p99
from observability.metric_sketches as s
cross join lateral (
  select coalesce(s.percentiles,
    @sketch_schema@.approx_percentile_array(array[0.5, 0.95, 0.99], s.sketch)) as percentiles
  -- offset 0 keeps this subquery apart, so the percentiles are read once per row rather than
  -- once for each of p50, p95 and p99
  offset 0
) as p
where s.count > 0;

-- Days in a time zone of the caller's choice, rolled up from the hourly sketches: rows shaped
-- like observability.metrics, granularity 'day', bucket = local midnight. Hourly buckets
-- starting in [from_time, to_time) are used, so pass local midnights to get whole days.
-- Exact for time zones whose UTC offset is a whole number of hours; in others (India, Nepal,
-- ...) an hour that straddles local midnight counts for the day in which it starts.
create or replace function observability.metrics_by_local_day
  (time_zone text, from_time timestamptz, to_time timestamptz)
returns table
( bucket timestamptz, granularity text, metric_type text, dimension_type text
, dimension_value text, count bigint, sum float8, min float8, max float8, avg float8
, p50 float8, p95 float8, p99 float8
)
language sql stable parallel safe as $$
  select d.bucket, 'day'::text, d.metric_type, d.dimension_type, d.dimension_value,
    d.count, d.sum, d.min, d.max, d.sum / nullif(d.count, 0),
    p.percentiles[1], p.percentiles[2], p.percentiles[3]
  from (
    select public.time_bucket(interval '1 day', s.bucket, time_zone) as bucket,
      s.metric_type, s.dimension_type, s.dimension_value,
      pg_catalog.sum(s.count)::bigint as count, pg_catalog.sum(s.sum) as sum,
      pg_catalog.min(s.min) as min, pg_catalog.max(s.max) as max,
      @sketch_schema@.rollup(s.sketch) as sketch
    from observability.metric_sketches as s
    where s.granularity = 'hour' and s.bucket >= from_time and s.bucket < to_time
    group by 1, 2, 3, 4
  ) as d
  cross join lateral
    @sketch_schema@.approx_percentile_array(array[0.5, 0.95, 0.99], d.sketch) as p (percentiles)
  where d.count > 0
$$;

-- LLM call rollups: continuous aggregates by hour over the spans with span_type 'llm', by day as
-- a rollup of the hours and by week (Monday 00:00 UTC) as a rollup of the days.
--
-- Each span is counted for the whole ('overall', ''), for its model (gen_ai.request.model) and
-- for its provider (gen_ai.provider.name); a span without a model or provider only in the
-- others. Latencies (duration, time to first token) get percentile sketches; tokens and cost,
-- whose distributions matter less than their totals, get count, sum, min, max and average.

create materialized view observability.llm_spans_hourly
with (timescaledb.continuous, timescaledb.materialized_only = false) as
select
  public.time_bucket(interval '1 hour', s.started_at) as bucket,
  d.dimension_type,
  d.dimension_value,
  pg_catalog.count(*) as span_count,
  pg_catalog.count(*) filter (where s.status = 'error') as error_count,
  pg_catalog.count(s.duration_ms) as duration_count,
  pg_catalog.sum(s.duration_ms) as duration_sum,
  pg_catalog.min(s.duration_ms) as duration_min,
  pg_catalog.max(s.duration_ms) as duration_max,
  pg_catalog.avg(s.duration_ms)::float8 as duration_avg,
  @sketch_schema@.percentile_agg(s.duration_ms::float8) as duration_sketch,
  pg_catalog.count(s.time_to_first_token_ms) as ttft_count,
  pg_catalog.sum(s.time_to_first_token_ms) as ttft_sum,
  pg_catalog.min(s.time_to_first_token_ms) as ttft_min,
  pg_catalog.max(s.time_to_first_token_ms) as ttft_max,
  pg_catalog.avg(s.time_to_first_token_ms)::float8 as ttft_avg,
  @sketch_schema@.percentile_agg(s.time_to_first_token_ms::float8) as ttft_sketch,
  pg_catalog.count(s.input_tokens) as input_tokens_count,
  pg_catalog.sum(s.input_tokens) as input_tokens_sum,
  pg_catalog.min(s.input_tokens) as input_tokens_min,
  pg_catalog.max(s.input_tokens) as input_tokens_max,
  pg_catalog.count(s.output_tokens) as output_tokens_count,
  pg_catalog.sum(s.output_tokens) as output_tokens_sum,
  pg_catalog.min(s.output_tokens) as output_tokens_min,
  pg_catalog.max(s.output_tokens) as output_tokens_max,
  pg_catalog.count(s.cost_usd) as cost_count,
  pg_catalog.sum(s.cost_usd) as cost_sum,
  pg_catalog.min(s.cost_usd) as cost_min,
  pg_catalog.max(s.cost_usd) as cost_max
from observability.spans as s
cross join lateral (
  values
    ('overall', ''),
    ('model', s.model),
    ('provider', s.provider)
) as d (dimension_type, dimension_value)
where s.span_type = 'llm' and d.dimension_value is not null
group by 1, 2, 3
with no data;

create materialized view observability.llm_spans_daily
with (timescaledb.continuous, timescaledb.materialized_only = false) as
select
  public.time_bucket(interval '1 day', h.bucket) as bucket,
  h.dimension_type,
  h.dimension_value,
  pg_catalog.sum(h.span_count)::bigint as span_count,
  pg_catalog.sum(h.error_count)::bigint as error_count,
  pg_catalog.sum(h.duration_count)::bigint as duration_count,
  pg_catalog.sum(h.duration_sum)::bigint as duration_sum,
  pg_catalog.min(h.duration_min) as duration_min,
  pg_catalog.max(h.duration_max) as duration_max,
  pg_catalog.sum(h.duration_sum)::float8
    / nullif(pg_catalog.sum(h.duration_count), 0)::float8 as duration_avg,
  @sketch_schema@.rollup(h.duration_sketch) as duration_sketch,
  pg_catalog.sum(h.ttft_count)::bigint as ttft_count,
  pg_catalog.sum(h.ttft_sum)::bigint as ttft_sum,
  pg_catalog.min(h.ttft_min) as ttft_min,
  pg_catalog.max(h.ttft_max) as ttft_max,
  pg_catalog.sum(h.ttft_sum)::float8
    / nullif(pg_catalog.sum(h.ttft_count), 0)::float8 as ttft_avg,
  @sketch_schema@.rollup(h.ttft_sketch) as ttft_sketch,
  pg_catalog.sum(h.input_tokens_count)::bigint as input_tokens_count,
  pg_catalog.sum(h.input_tokens_sum)::bigint as input_tokens_sum,
  pg_catalog.min(h.input_tokens_min) as input_tokens_min,
  pg_catalog.max(h.input_tokens_max) as input_tokens_max,
  pg_catalog.sum(h.output_tokens_count)::bigint as output_tokens_count,
  pg_catalog.sum(h.output_tokens_sum)::bigint as output_tokens_sum,
  pg_catalog.min(h.output_tokens_min) as output_tokens_min,
  pg_catalog.max(h.output_tokens_max) as output_tokens_max,
  pg_catalog.sum(h.cost_count)::bigint as cost_count,
  pg_catalog.sum(h.cost_sum) as cost_sum,
  pg_catalog.min(h.cost_min) as cost_min,
  pg_catalog.max(h.cost_max) as cost_max,
  @sketch_schema@.approx_percentile_array(array[0.5, 0.95, 0.99],
    @sketch_schema@.rollup(h.duration_sketch)) as duration_percentiles,
  @sketch_schema@.approx_percentile_array(array[0.5, 0.95, 0.99],
    @sketch_schema@.rollup(h.ttft_sketch)) as ttft_percentiles
from observability.llm_spans_hourly as h
group by 1, 2, 3
with no data;

create materialized view observability.llm_spans_weekly
with (timescaledb.continuous, timescaledb.materialized_only = false) as
select
  public.time_bucket(interval '1 week', d.bucket) as bucket,
  d.dimension_type,
  d.dimension_value,
  pg_catalog.sum(d.span_count)::bigint as span_count,
  pg_catalog.sum(d.error_count)::bigint as error_count,
  pg_catalog.sum(d.duration_count)::bigint as duration_count,
  pg_catalog.sum(d.duration_sum)::bigint as duration_sum,
  pg_catalog.min(d.duration_min) as duration_min,
  pg_catalog.max(d.duration_max) as duration_max,
  pg_catalog.sum(d.duration_sum)::float8
    / nullif(pg_catalog.sum(d.duration_count), 0)::float8 as duration_avg,
  @sketch_schema@.rollup(d.duration_sketch) as duration_sketch,
  pg_catalog.sum(d.ttft_count)::bigint as ttft_count,
  pg_catalog.sum(d.ttft_sum)::bigint as ttft_sum,
  pg_catalog.min(d.ttft_min) as ttft_min,
  pg_catalog.max(d.ttft_max) as ttft_max,
  pg_catalog.sum(d.ttft_sum)::float8
    / nullif(pg_catalog.sum(d.ttft_count), 0)::float8 as ttft_avg,
  @sketch_schema@.rollup(d.ttft_sketch) as ttft_sketch,
  pg_catalog.sum(d.input_tokens_count)::bigint as input_tokens_count,
  pg_catalog.sum(d.input_tokens_sum)::bigint as input_tokens_sum,
  pg_catalog.min(d.input_tokens_min) as input_tokens_min,
  pg_catalog.max(d.input_tokens_max) as input_tokens_max,
  pg_catalog.sum(d.output_tokens_count)::bigint as output_tokens_count,
  pg_catalog.sum(d.output_tokens_sum)::bigint as output_tokens_sum,
  pg_catalog.min(d.output_tokens_min) as output_tokens_min,
  pg_catalog.max(d.output_tokens_max) as output_tokens_max,
  pg_catalog.sum(d.cost_count)::bigint as cost_count,
  pg_catalog.sum(d.cost_sum) as cost_sum,
  pg_catalog.min(d.cost_min) as cost_min,
  pg_catalog.max(d.cost_max) as cost_max,
  @sketch_schema@.approx_percentile_array(array[0.5, 0.95, 0.99],
    @sketch_schema@.rollup(d.duration_sketch)) as duration_percentiles,
  @sketch_schema@.approx_percentile_array(array[0.5, 0.95, 0.99],
    @sketch_schema@.rollup(d.ttft_sketch)) as ttft_percentiles
from observability.llm_spans_daily as d
group by 1, 2, 3
with no data;

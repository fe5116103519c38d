-- Documentation of the rollups, their views and functions (re-run on every install).

comment on view observability.traces_hourly is
  'Traces per hour and dimension value (overall, operation_type, kb, user): counts, errors, '
  'duration and total tokens with percentile sketches, cost. Continuous aggregate over '
  'observability.traces, real-time.';
comment on view observability.traces_daily is
  'Traces per UTC day and dimension value: rollup() of observability.traces_hourly, with '
  'p50/p95/p99 stored in *_percentiles. Continuous aggregate, real-time.';
comment on view observability.traces_weekly is
  'Traces per week (Monday 00:00 UTC) and dimension value: rollup() of '
  'observability.traces_daily, with p50/p95/p99 stored. Continuous aggregate, real-time.';
comment on view observability.llm_spans_hourly is
  'LLM spans (span_type llm) per hour and dimension value (overall, model, provider): counts, '
  'errors, duration and time to first token with percentile sketches, tokens, cost. '
  'Continuous aggregate over observability.spans, real-time.';
comment on view observability.llm_spans_daily is
  'LLM spans per UTC day: rollup() of observability.llm_spans_hourly, p50/p95/p99 stored. '
  'Continuous aggregate, real-time.';
comment on view observability.llm_spans_weekly is
  'LLM spans per week (Monday 00:00 UTC): rollup() of observability.llm_spans_daily, '
  'p50/p95/p99 stored. Continuous aggregate, real-time.';
comment on view observability.document_events_hourly is
  'Document processing events per hour and dimension value (overall, event_type): counts, '
  'failures, duration with a percentile sketch. Continuous aggregate over '
  'observability.document_events, real-time.';
comment on view observability.document_events_daily is
  'Document processing events per UTC day: rollup() of observability.document_events_hourly, '
  'p50/p95/p99 stored. Continuous aggregate, real-time.';
comment on view observability.document_events_weekly is
  'Document processing events per week (Monday 00:00 UTC): rollup() of '
  'observability.document_events_daily, p50/p95/p99 stored. Continuous aggregate, real-time.';

comment on view observability.traces_rollups is
  'The hourly, daily and weekly trace rollups in one relation (granularity hour, day, week), '
  'sketches included, for rollups across buckets or dimension values at query time.';
comment on view observability.llm_spans_rollups is
  'The hourly, daily and weekly LLM span rollups in one relation, sketches included.';
comment on view observability.document_events_rollups is
  'The hourly, daily and weekly document event rollups in one relation, sketches included.';
comment on view observability.metric_sketches is
  'One row per bucket, granularity, metric and dimension value, with the metric''s sketch: the '
  'input for rollups of percentiles at query time (see metrics_by_local_day).';
comment on view observability.metrics is
  'Dashboard view: one row per bucket, granularity (hour, day, week), metric and dimension '
  'value, with count, sum, min, max, avg and p50, p95, p99 as plain numbers. The same shape '
  'whichever percentile sketch is installed.';
comment on function observability.metrics_by_local_day(text, timestamptz, timestamptz) is
  'Rows shaped like observability.metrics for days in the given time zone, rolled up from the '
  'hourly sketches of [from_time, to_time). Exact for whole-hour UTC offsets.';

comment on function observability.percentile_sketch() is
  'The percentile sketch the rollups use, chosen at install: timescaledb_toolkit (UddSketch) '
  'or observability (the project''s own), and the schema of its functions.';
comment on function observability.apply_raw_data_policies(interval, interval) is
  'Set the retention and compression ages of the raw hypertables traces, spans and '
  'document_events (NULL keeps the current value). Refuses a retention that would reach into '
  'the hourly rollups'' refresh window.';
comment on function observability.ensure_refresh_policy(regclass, interval, interval, interval) is
  'Add a rollup''s refresh policy, or alter its window and schedule in place.';
comment on type observability.percentile_sketch is
  'The project''s mergeable percentile sketch: counts per logarithmic bucket (ratio 1.01), '
  'with the exact count, minimum and maximum.';

comment on table observability.granularities is
  'The rollup granularities (hour, day, week): bucket width and the refresh policy of the '
  'continuous aggregates at that level. Versioned in sql/incremental; the worker mirrors it.';
comment on column observability.granularities.name is
  'hour, day or week: the value of metrics_aggregates.granularity.';
comment on column observability.granularities.position is 'Order, finest first.';
comment on column observability.granularities.level is
  'hourly, daily or weekly: the suffix of the continuous aggregates of this granularity.';
comment on column observability.granularities.bucket_width is 'Width of one bucket.';
comment on column observability.granularities.refresh_start_offset is
  'The refresh policy refreshes buckets from now - refresh_start_offset ...';
comment on column observability.granularities.refresh_end_offset is
  '... to now - refresh_end_offset.';
comment on column observability.granularities.refresh_schedule is
  'How often the refresh policy runs.';
comment on view observability.rollups is
  'Every continuous aggregate of the schema: source table family, granularity, and the rollup.';
comment on index observability.granularities_pkey is 'One row per granularity name.';
comment on index observability.granularities_position_key is 'One granularity per position.';
comment on index observability.granularities_level_key is
  'One granularity per rollup suffix, so each continuous aggregate name is taken once.';

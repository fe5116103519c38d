-- One row per span (a step inside a trace: an LLM call, a retrieval, a tool call, ...).
-- Columns follow the OpenTelemetry GenAI semantic conventions; see the column comments.
create table observability.spans
( trace_id text not null
, span_id text not null
, parent_span_id text
, started_at timestamptz not null
, ended_at timestamptz
, duration_ms integer
, name text not null
, span_type text not null
, operation_name text
, status text not null default 'running'
, provider text
, model text
, input_tokens integer
, output_tokens integer
, time_to_first_token_ms integer
, cost_usd numeric(10, 6)
, kb_id uuid
, documents_retrieved integer
, error_type text
, error_message text
, attributes jsonb not null default '{}'::jsonb
-- Span ids are unique within a trace. trace_id leads, so this index also serves "all spans of a
-- trace"; the time column is there because hypertable unique keys must contain it.
, constraint spans_pkey primary key (trace_id, span_id, started_at)
, constraint spans_trace_id_format check (trace_id ~ '^[0-9a-f]{32}$')
, constraint spans_trace_id_not_zero check (trace_id <> '00000000000000000000000000000000')
, constraint spans_span_id_format check (span_id ~ '^[0-9a-f]{16}$')
, constraint spans_span_id_not_zero check (span_id <> '0000000000000000')
, constraint spans_parent_span_id_format check (parent_span_id ~ '^[0-9a-f]{16}$')
, constraint spans_parent_span_id_not_zero check (parent_span_id <> '0000000000000000')
, constraint spans_parent_span_id_not_self check (parent_span_id <> span_id)
, constraint spans_name_not_empty check (name <> '')
, constraint spans_span_type_valid check
    (span_type in ('llm', 'embedding', 'retrieval', 'rerank', 'tool', 'agent', 'chain', 'other'))
, constraint spans_status_valid check (status in ('running', 'ok', 'error'))
-- provider and model become dimension values in metrics_aggregates, where '' means "overall".
, constraint spans_provider_not_empty check (provider <> '')
, constraint spans_model_not_empty check (model <> '')
, constraint spans_ended_at_not_before_started_at check (ended_at >= started_at)
, constraint spans_duration_ms_non_negative check (duration_ms >= 0)
, constraint spans_input_tokens_non_negative check (input_tokens >= 0)
, constraint spans_output_tokens_non_negative check (output_tokens >= 0)
, constraint spans_time_to_first_token_ms_non_negative check (time_to_first_token_ms >= 0)
, constraint spans_cost_usd_non_negative check (cost_usd >= 0)
, constraint spans_documents_retrieved_non_negative check (documents_retrieved >= 0)
, constraint spans_attributes_is_object check (pg_catalog.jsonb_typeof(attributes) = 'object')
);

select public.create_hypertable
( 'observability.spans'
, public.by_range('started_at', interval '1 day')
, create_default_indexes => false
, if_not_exists => true
);

-- Spans of a trace: served by spans_pkey.
-- Time-window scans: rollups (continuous-aggregate refreshes) read one bucket at a time.
create index spans_started_at_idx on observability.spans (started_at);
-- The model dimension: latency, tokens and cost per model over a window. Only LLM and
-- embedding spans carry a model.
create index spans_model_started_at_idx
  on observability.spans (model, started_at) where model is not null;
-- Retrieval quality per knowledge base (documents retrieved, retrieval latency).
create index spans_kb_id_started_at_idx
  on observability.spans (kb_id, started_at) where kb_id is not null;

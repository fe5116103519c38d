-- Documentation of the observability schema, kept here (re-run on every install) so it can be
-- improved without a new incremental file. OpenTelemetry attribute names refer to the GenAI
-- semantic conventions (gen_ai.*) and the general conventions (error.type, session.id, ...).

comment on schema observability is
  'Traces, spans, chat messages and document events of the LLM/RAG product, and their rollups.';

-- traces
comment on table observability.traces is
  'One row per trace: a user-visible operation such as a chat turn, a search or a generation. '
  'Hypertable on started_at, 1-day chunks.';
comment on column observability.traces.trace_id is
  'W3C trace-context trace-id (OpenTelemetry trace_id): 32 lowercase hex digits, not all zeros.';
comment on column observability.traces.started_at is
  'Start of the root span (OpenTelemetry start_time_unix_nano), UTC.';
comment on column observability.traces.duration_ms is
  'ended_at - started_at in whole milliseconds, as reported by the application.';
comment on column observability.traces.name is 'Root span name (OpenTelemetry span name).';
comment on column observability.traces.operation_type is
  'Application-level operation (chat, search, generation, ...): gen_ai.operation.name of the '
  'root span where the application sets it. The operation_type metrics dimension.';
comment on column observability.traces.status is
  'running while the root span is open, then its OpenTelemetry status code: ok or error.';
comment on column observability.traces.user_id is
  'End user who started the operation (user.id / enduser.id). The user metrics dimension.';
comment on column observability.traces.session_id is
  'Conversation or session the trace belongs to (session.id; gen_ai.conversation.id).';
comment on column observability.traces.kb_id is
  'Knowledge base the operation ran against (gen_ai.data_source.id). The kb metrics dimension.';
comment on column observability.traces.total_tokens is
  'Sum over the trace''s spans of gen_ai.usage.input_tokens + gen_ai.usage.output_tokens.';
comment on column observability.traces.cost_usd is
  'Sum of the spans'' cost_usd. Computed by the application from token counts and provider '
  'prices; OpenTelemetry has no cost attribute.';
comment on column observability.traces.error_type is
  'error.type of the failure (exception class or error code) when status is error.';
comment on column observability.traces.attributes is
  'Remaining OpenTelemetry attributes of the root span, as a JSON object.';

-- spans
comment on table observability.spans is
  'One row per span: a step of a trace (LLM call, embedding, retrieval, rerank, tool call, ...). '
  'Hypertable on started_at, 1-day chunks.';
comment on column observability.spans.span_id is
  'OpenTelemetry span_id (W3C trace-context): 16 lowercase hex digits, not all zeros.';
comment on column observability.spans.parent_span_id is
  'span_id of the parent span (OpenTelemetry parent_span_id); NULL for the root span.';
comment on column observability.spans.span_type is
  'Kind of step, normalised from gen_ai.operation.name: chat, text_completion and '
  'generate_content are llm; embeddings is embedding; execute_tool is tool; invoke_agent and '
  'create_agent are agent. retrieval, rerank and chain come from the instrumentation.';
comment on column observability.spans.operation_name is
  'gen_ai.operation.name exactly as instrumented (chat, embeddings, execute_tool, ...).';
comment on column observability.spans.status is
  'running while the span is open, then its OpenTelemetry status code: ok or error.';
comment on column observability.spans.provider is
  'gen_ai.provider.name (formerly gen_ai.system): openai, anthropic, aws.bedrock, ...';
comment on column observability.spans.model is
  'gen_ai.request.model: the model the application asked for. The model metrics dimension.';
comment on column observability.spans.input_tokens is 'gen_ai.usage.input_tokens.';
comment on column observability.spans.output_tokens is 'gen_ai.usage.output_tokens.';
comment on column observability.spans.time_to_first_token_ms is
  'Time from request to the first streamed token, in milliseconds: one observation of the '
  'gen_ai.server.time_to_first_token metric (which is in seconds). NULL when not streamed.';
comment on column observability.spans.cost_usd is
  'Cost of the call in USD, computed by the application from token counts and provider prices; '
  'OpenTelemetry has no cost attribute.';
comment on column observability.spans.kb_id is
  'Knowledge base a retrieval span searched (gen_ai.data_source.id).';
comment on column observability.spans.documents_retrieved is
  'Number of documents (chunks) a retrieval or rerank span returned, as the application '
  'reports it.';
comment on column observability.spans.error_type is 'error.type when status is error.';
comment on column observability.spans.attributes is
  'Remaining OpenTelemetry span attributes (gen_ai.request.temperature, ...), as a JSON object.';

-- chat_messages
comment on table observability.chat_messages is
  'Messages of conversations with the sources and citations of answers. '
  'Hypertable on created_at, 7-day chunks.';
comment on column observability.chat_messages.session_id is
  'Conversation the message belongs to (gen_ai.conversation.id).';
comment on column observability.chat_messages.trace_id is
  'Trace that produced or consumed the message, when there is one.';
comment on column observability.chat_messages.role is
  'Message role as in the GenAI input/output message conventions: system, user, assistant, tool.';
comment on column observability.chat_messages.model is
  'gen_ai.response.model of the model that wrote an assistant message.';
comment on column observability.chat_messages.token_count is
  'Tokens of the message: gen_ai.usage.output_tokens for assistant messages, the input share '
  'for others, as counted by the application.';
comment on column observability.chat_messages.latency_ms is
  'For assistant messages: time from the user message to the complete answer, milliseconds.';
comment on column observability.chat_messages.sources is
  'JSON array of the documents/chunks retrieved for the answer (id, title, score, ...).';
comment on column observability.chat_messages.citations is
  'JSON array of the citations the answer makes into sources.';

-- document_events
comment on table observability.document_events is
  'One row per processing step of a knowledge-base document, with step metrics. '
  'Hypertable on created_at, 1-day chunks.';
comment on column observability.document_events.event_type is
  'Processing step, a lowercase identifier: upload, parse, chunk, embed, index, delete, ...';
comment on column observability.document_events.status is
  'running when a step starts, ok or error when it ends (same codes as traces).';
comment on column observability.document_events.kb_id is
  'Knowledge base of the document (gen_ai.data_source.id).';
comment on column observability.document_events.chunks_count is
  'Chunks produced (chunk step) or written (embed/index steps).';
comment on column observability.document_events.token_count is
  'Tokens processed by the step, for example gen_ai.usage.input_tokens of an embed step.';

-- metrics_aggregates
comment on table observability.metrics_aggregates is
  'Rolled-up statistics per (metric_type, granularity, dimension, bucket), written by the '
  'aggregation worker with an upsert on the primary key. Hypertable on bucket_time, 7-day chunks.';
comment on column observability.metrics_aggregates.bucket_time is
  'Start of the bucket, UTC: on the hour, at midnight, or Monday midnight for weeks.';
comment on column observability.metrics_aggregates.granularity is 'Bucket width: hour, day or week.';
comment on column observability.metrics_aggregates.metric_type is
  'Dotted metric name: the source and the measured column, for example trace.duration_ms, '
  'span.input_tokens, span.cost_usd.';
comment on column observability.metrics_aggregates.dimension_type is
  'What the row is grouped by: overall (no grouping), operation_type, model, kb, user, provider.';
comment on column observability.metrics_aggregates.dimension_value is
  'The group''s value (an operation type, a model name, a uuid as text); '''' for overall rows. '
  'Never NULL, so the primary key can serve as the upsert target.';
comment on column observability.metrics_aggregates.count is 'Number of observations in the bucket.';
comment on column observability.metrics_aggregates.p50_value is
  'Median; from a mergeable percentile sketch, so approximate.';
comment on column observability.metrics_aggregates.p95_value is
  '95th percentile; from a mergeable percentile sketch, so approximate.';
comment on column observability.metrics_aggregates.p99_value is
  '99th percentile; from a mergeable percentile sketch, so approximate.';

-- provider_sync_status
comment on table observability.provider_sync_status is
  'One row per external observability provider that data is exported to: the export watermark '
  'and job health. A plain table: it is small and updated in place.';
comment on column observability.provider_sync_status.provider_name is
  'Export target, for example langfuse or otlp.';
comment on column observability.provider_sync_status.synced_through is
  'Watermark: every trace that started before this time has been exported.';
comment on column observability.provider_sync_status.records_synced is
  'Records exported since the row was created.';
comment on column observability.provider_sync_status.consecutive_failures is
  'Failed export runs since the last success; 0 after a success.';

-- indexes: why each exists
comment on index observability.traces_pkey is
  'Lookup of a trace by trace_id (the leading column); makes re-delivered traces idempotent.';
comment on index observability.traces_started_at_idx is
  'Recent traces, and rollups that scan one time bucket of all traces.';
comment on index observability.traces_operation_type_started_at_idx is
  'Rollups and dashboards for one operation type over a time window.';
comment on index observability.traces_user_id_started_at_idx is
  'A user''s traces over a time window (user dimension). Partial: anonymous traces are skipped.';
comment on index observability.traces_kb_id_started_at_idx is
  'A knowledge base''s traces over a time window (kb dimension). Partial: no-KB traces skipped.';
comment on index observability.traces_session_id_started_at_idx is
  'All traces of one session in order (conversation replay).';
comment on index observability.spans_pkey is
  'All spans of a trace (trace_id leads); span ids are unique within a trace.';
comment on index observability.spans_started_at_idx is
  'Rollups that scan one time bucket of all spans.';
comment on index observability.spans_model_started_at_idx is
  'Latency, tokens and cost per model over a time window (model dimension).';
comment on index observability.spans_kb_id_started_at_idx is
  'Retrieval spans of one knowledge base over a time window.';
comment on index observability.chat_messages_pkey is
  'Row identity; created_at is in it because every unique key on a hypertable needs the time '
  'column.';
comment on index observability.chat_messages_created_at_idx is
  'Recent messages, and rollups that scan one time bucket.';
comment on index observability.chat_messages_session_id_created_at_idx is
  'One conversation in order: the main read of this table.';
comment on index observability.chat_messages_trace_id_idx is
  'From a trace to the messages it produced.';
comment on index observability.document_events_pkey is
  'Row identity; created_at is in it because every unique key on a hypertable needs the time '
  'column.';
comment on index observability.document_events_created_at_idx is
  'Recent processing activity, and rollups that scan one time bucket.';
comment on index observability.document_events_document_id_created_at_idx is
  'The processing history of one document, in order.';
comment on index observability.document_events_kb_id_created_at_idx is
  'Ingestion activity of one knowledge base over a time window.';
comment on index observability.metrics_aggregates_pkey is
  'Upsert target of the aggregation worker, and reads of one series over a time range.';
comment on index observability.metrics_aggregates_granularity_bucket_time_idx is
  'All series of a granularity in a period: dashboard overviews, backfill gap detection.';
comment on index observability.provider_sync_status_pkey is 'Row identity.';
comment on index observability.provider_sync_status_provider_name_key is
  'One row per provider; lookup by name.';

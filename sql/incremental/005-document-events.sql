-- One row per processing step of a document in a knowledge base (upload, parse, chunk, embed,
-- index, delete), with the step's metrics.
create table observability.document_events
( id uuid not null default pg_catalog.gen_random_uuid()
, created_at timestamptz not null default pg_catalog.now()
, document_id uuid not null
, kb_id uuid
, trace_id text
, event_type text not null
, status text not null
, duration_ms integer
, chunks_count integer
, token_count integer
, file_size_bytes bigint
, error_message text
, attributes jsonb not null default '{}'::jsonb
, constraint document_events_pkey primary key (id, created_at)
, constraint document_events_event_type_format check (event_type ~ '^[a-z][a-z0-9_]*$')
, constraint document_events_status_valid check (status in ('running', 'ok', 'error'))
, constraint document_events_trace_id_format check (trace_id ~ '^[0-9a-f]{32}$')
, constraint document_events_trace_id_not_zero check
    (trace_id <> '00000000000000000000000000000000')
, constraint document_events_duration_ms_non_negative check (duration_ms >= 0)
, constraint document_events_chunks_count_non_negative check (chunks_count >= 0)
, constraint document_events_token_count_non_negative check (token_count >= 0)
, constraint document_events_file_size_bytes_non_negative check (file_size_bytes >= 0)
, constraint document_events_attributes_is_object check
    (pg_catalog.jsonb_typeof(attributes) = 'object')
);

select public.create_hypertable
( 'observability.document_events'
, public.by_range('created_at', interval '1 day')
, create_default_indexes => false
, if_not_exists => true
);

-- Recent processing activity, and time-window rollups.
create index document_events_created_at_idx on observability.document_events (created_at);
-- The processing history of one document, in order.
create index document_events_document_id_created_at_idx
  on observability.document_events (document_id, created_at);
-- Ingestion activity of one knowledge base over a window.
create index document_events_kb_id_created_at_idx
  on observability.document_events (kb_id, created_at) where kb_id is not null;

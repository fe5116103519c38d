-- Span events (OpenTelemetry Span.events: a name, a time and attributes) and span links
-- (Span.links: another span, often of another trace, with attributes).
--
-- Events: one row per event, in a hypertable partitioned on the start time of their span
-- (span_started_at), not on the event's own time, with the spans' chunk width, compression
-- and retention. So an event lies in the chunk of its span: retention drops a span's events
-- at the age it drops the span (the same chunk boundaries), not a span without its events or
-- the events of a span still kept, and replacing the events of a re-sent span touches the
-- primary key of the chunks that hold the span. A span may record hundreds of events (one per streamed chunk), so rows, not a column
-- of the span: the rollups and other readers of spans do not carry them.
--
-- Links: a jsonb array on the span itself. A span carries a few of them, set when it starts,
-- and stored with the span they are written, replaced, compressed and dropped with it at no
-- extra cost. Links into a trace from other traces are found through a partial index on the
-- spans that have links (observability.trace_links).
create table observability.span_events
( trace_id text not null
, span_id text not null
, span_started_at timestamptz not null
, event_index integer not null
, occurred_at timestamptz
, name text not null
, attributes jsonb not null default '{}'::jsonb
-- A span's events in their order; trace_id leads, so this also serves "all events of a trace".
, constraint span_events_pkey primary key (trace_id, span_id, span_started_at, event_index)
, constraint span_events_trace_id_format check (trace_id ~ '^[0-9a-f]{32}$')
, constraint span_events_span_id_format check (span_id ~ '^[0-9a-f]{16}$')
, constraint span_events_event_index_non_negative check (event_index >= 0)
, constraint span_events_name_not_empty check (name <> '')
, constraint span_events_attributes_is_object check
    (pg_catalog.jsonb_typeof(attributes) = 'object')
);

select public.create_hypertable
( 'observability.span_events'
, public.by_range('span_started_at', interval '1 day')
, create_default_indexes => false
, if_not_exists => true
);

-- Events of one kind over a time window (guardrail decisions per hour, say).
create index span_events_name_span_started_at_idx
  on observability.span_events (name, span_started_at);

-- Compression as for spans: newest first, then the rest of the primary key. No segmentby:
-- event names are chosen by each instrumentation and may be of any number.
alter table observability.span_events set
( timescaledb.compress
, timescaledb.compress_orderby = 'span_started_at desc, trace_id, span_id, event_index'
);

-- The default without a cast: TimescaleDB refuses '[]'::jsonb as a "non-constant default" on
-- a hypertable with compression; PostgreSQL stores the same default either way.
alter table observability.spans
  add column links jsonb not null default '[]'
  constraint spans_links_is_array check (pg_catalog.jsonb_typeof(links) = 'array');

-- Spans that link to other spans, for finding the links into a trace.
create index spans_links_started_at_idx
  on observability.spans (started_at) where links <> '[]'::jsonb;

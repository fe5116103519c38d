-- Span events and links: their documentation, how events are classified, and the queries
-- "what happened in this trace" (observability.trace_events) and "which traces does this one
-- link to, or is linked from" (observability.trace_links). The storage design is explained in
-- sql/incremental/018-span-events.sql.

comment on table observability.span_events is
  'OpenTelemetry span events (exceptions, streamed chunks, tool calls, retrieval hits, '
  'guardrail decisions, messages, ...), one row each. Hypertable on span_started_at (the start '
  'of the event''s span, not the event''s own time), 1-day chunks like spans, with the same '
  'compression and retention: an event lives and is dropped with its span. A re-sent span '
  'replaces its stored events. At most 256 events are stored per span (the OTLP endpoint '
  'keeps the first 256 and warns; the bulk writer refuses more).';
comment on column observability.span_events.trace_id is
  'trace_id of the event''s span.';
comment on column observability.span_events.span_id is
  'span_id of the event''s span.';
comment on column observability.span_events.span_started_at is
  'started_at of the event''s span: the partitioning column, so that the event lies in the '
  'chunk of its span.';
comment on column observability.span_events.event_index is
  'Position of the event in its span''s event list, from 0, as the span reported them.';
comment on column observability.span_events.occurred_at is
  'The event''s time (OpenTelemetry time_unix_nano), microsecond precision; NULL when the '
  'sender gave none.';
comment on column observability.span_events.name is
  'The event name: exception, gen_ai.content.completion.chunk, gen_ai.tool.message, ... '
  'observability.span_event_kind classifies it.';
comment on column observability.span_events.attributes is
  'The event''s OpenTelemetry attributes, as a JSON object (the same size limits as span '
  'attributes).';
comment on index observability.span_events_pkey is
  'The events of a span in order, and all events of a trace (trace_id leads). span_started_at '
  'is in it because every unique key on a hypertable needs the time column.';
comment on index observability.span_events_name_span_started_at_idx is
  'Events of one name over a time window (guardrail decisions per hour, say).';
comment on column observability.spans.links is
  'OpenTelemetry span links, as a JSON array of {"trace_id", "span_id", "attributes"} '
  '(and "trace_state" when set): the spans, often of other traces, this one fans out from or '
  'in from. At most 128 per span. observability.trace_links lists them per trace.';
comment on index observability.spans_links_started_at_idx is
  'The spans that carry links, by time: finding the links into a trace from other traces.';

-- What an event is, from its name and attributes, along the OpenTelemetry GenAI semantic
-- conventions where they define the event (gen_ai.*.message, gen_ai.choice,
-- gen_ai.client.inference.operation.details, gen_ai.evaluation.result, exception) or the
-- attribute (gen_ai.tool.*, gen_ai.data_source.id), and by common names where they define
-- none (guardrails, retrieval hits, streamed chunks as OpenLLMetry records them). Computed at
-- query time, not stored, so that a rule changed here applies to every stored event.
create or replace function observability.span_event_kind(name text, attributes jsonb)
returns text
language sql immutable parallel safe as $$
  select case
    when name = 'exception' or name ~ '^gen_ai\..*exception$' then 'exception'
    when name in ('gen_ai.content.completion.chunk', 'llm.content.completion.chunk')
      then 'stream_chunk'
    when name ~* 'guardrail' or exists (
        select from pg_catalog.jsonb_object_keys(attributes) as k (key)
        where k.key ~* '^(gen_ai\.)?guardrail') then 'guardrail'
    when name = 'gen_ai.tool.message' or name ~* '(^|[._ -])(tool|function)([._ -]?call|$)'
      or attributes ?| array['gen_ai.tool.name', 'gen_ai.tool.call.id'] then 'tool_call'
    when name ~* '(retriev|rerank)' or attributes ? 'gen_ai.data_source.id' or exists (
        select from pg_catalog.jsonb_object_keys(attributes) as k (key)
        where k.key ~* '^retriev') then 'retrieval'
    when name = 'gen_ai.evaluation.result' then 'evaluation'
    when name in ('gen_ai.system.message', 'gen_ai.user.message', 'gen_ai.assistant.message',
        'gen_ai.choice', 'gen_ai.client.inference.operation.details', 'gen_ai.content.prompt',
        'gen_ai.content.completion') then 'message'
    else 'other'
  end
$$;

-- Every stored event with its kind (exception, stream_chunk, guardrail, tool_call, retrieval,
-- evaluation, message, other) and its time from the start of its span. No join: filtered on
-- span_started_at (a time window: "guardrail blocks per hour") it reads only the chunks of
-- that window; filtered on trace_id, the primary key. observability.trace_events adds the
-- spans' names and types for one trace.
create or replace view observability.classified_span_events as
select
  e.trace_id,
  e.span_id,
  e.span_started_at,
  e.event_index,
  e.occurred_at,
  pg_catalog.date_part('epoch', e.occurred_at - e.span_started_at) * 1000 as offset_ms,
  e.name,
  observability.span_event_kind(e.name, e.attributes) as kind,
  e.attributes
from observability.span_events as e;

-- "Which tool calls, retrieval hits, guardrail events, ... happened in this trace", in the
-- order they happened, with the name and type of the span of each; kinds narrows to some
-- kinds (NULL: all).
--   select * from observability.trace_events('4bf92f3577b34da6a3ce929d0e0e4736',
--     array['tool_call', 'guardrail']);
create or replace function observability.trace_events(in_trace text, kinds text[] default null)
returns table
( trace_id text, span_id text, span_name text, span_type text, span_started_at timestamptz
, event_index integer, occurred_at timestamptz, offset_ms float8, name text, kind text
, attributes jsonb
)
language sql stable parallel safe as $$
  select c.trace_id, c.span_id, s.name, s.span_type, c.span_started_at, c.event_index,
    c.occurred_at, c.offset_ms, c.name, c.kind, c.attributes
  from observability.classified_span_events as c
  -- By identity: a bulk writer that moves a span to another start without passing its events
  -- leaves them at the former start.
  left join observability.spans as s
    on s.trace_id = in_trace and s.span_id = c.span_id
  where c.trace_id = in_trace and (kinds is null or c.kind = any(kinds))
  order by c.occurred_at nulls last, c.span_started_at, c.span_id, c.event_index
$$;

-- The links of a trace's spans to other spans (direction 'out'), and the links of other
-- traces' spans to this trace ('in': fan-in, a follow-up run, an agent handing work back).
-- Incoming links are looked for among spans that carry links and started between search_from
-- and search_to, by default from a day before the trace's first span to a day after its last
-- (for a trace with no stored span, only within a window given).
--   select * from observability.trace_links('4bf92f3577b34da6a3ce929d0e0e4736');
create or replace function observability.trace_links
  (in_trace text, search_from timestamptz default null, search_to timestamptz default null)
returns table
( direction text, trace_id text, span_id text, span_name text, linked_trace_id text
, linked_span_id text, attributes jsonb
)
language sql stable parallel safe as $$
  select 'out', s.trace_id, s.span_id, s.name, l.link ->> 'trace_id', l.link ->> 'span_id',
    coalesce(l.link -> 'attributes', '{}'::jsonb)
  from observability.spans as s
  cross join lateral pg_catalog.jsonb_array_elements(s.links) as l (link)
  where s.trace_id = in_trace
  union all
  select 'in', s.trace_id, s.span_id, s.name, l.link ->> 'trace_id', l.link ->> 'span_id',
    coalesce(l.link -> 'attributes', '{}'::jsonb)
  from observability.spans as s
  cross join lateral pg_catalog.jsonb_array_elements(s.links) as l (link)
  where s.links <> '[]'::jsonb
    and s.started_at >= coalesce(search_from, (select x.first_started_at - interval '1 day'
      from observability.trace_extents as x where x.trace_id = in_trace))
    and s.started_at <= coalesce(search_to, (select x.last_started_at + interval '1 day'
      from observability.trace_extents as x where x.trace_id = in_trace))
    and s.links @> pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object('trace_id', in_trace))
    and s.trace_id <> in_trace
    and l.link ->> 'trace_id' = in_trace
$$;

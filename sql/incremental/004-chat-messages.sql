-- One row per message of a conversation, with the sources the answer drew on.
create table observability.chat_messages
( id uuid not null default pg_catalog.gen_random_uuid()
, created_at timestamptz not null default pg_catalog.now()
, session_id text not null
, trace_id text
, user_id uuid
, kb_id uuid
, role text not null
, content text not null
, model text
, token_count integer
, latency_ms integer
, sources jsonb not null default '[]'::jsonb
, citations jsonb not null default '[]'::jsonb
, attributes jsonb not null default '{}'::jsonb
, constraint chat_messages_pkey primary key (id, created_at)
, constraint chat_messages_session_id_not_empty check (session_id <> '')
, constraint chat_messages_trace_id_format check (trace_id ~ '^[0-9a-f]{32}$')
, constraint chat_messages_trace_id_not_zero check (trace_id <> '00000000000000000000000000000000')
, constraint chat_messages_role_valid check (role in ('system', 'user', 'assistant', 'tool'))
, constraint chat_messages_model_not_empty check (model <> '')
, constraint chat_messages_token_count_non_negative check (token_count >= 0)
, constraint chat_messages_latency_ms_non_negative check (latency_ms >= 0)
, constraint chat_messages_sources_is_array check (pg_catalog.jsonb_typeof(sources) = 'array')
, constraint chat_messages_citations_is_array check (pg_catalog.jsonb_typeof(citations) = 'array')
, constraint chat_messages_attributes_is_object check
    (pg_catalog.jsonb_typeof(attributes) = 'object')
);

select public.create_hypertable
( 'observability.chat_messages'
, public.by_range('created_at', interval '7 days')
, create_default_indexes => false
, if_not_exists => true
);

-- Recent messages across all sessions, and time-window rollups.
create index chat_messages_created_at_idx on observability.chat_messages (created_at);
-- Showing one conversation in order: the main read of this table.
create index chat_messages_session_id_created_at_idx
  on observability.chat_messages (session_id, created_at);
-- From a trace to the messages it produced (trace view in the UI).
create index chat_messages_trace_id_idx
  on observability.chat_messages (trace_id) where trace_id is not null;

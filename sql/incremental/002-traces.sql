-- One row per trace (a user-visible operation: a chat turn, a search, a generation).
-- Ids follow W3C trace-context (OpenTelemetry): 32 lowercase hex digits, never all zeros.
create table observability.traces
( trace_id text not null
, started_at timestamptz not null
, ended_at timestamptz
, duration_ms integer
, name text not null
, operation_type text not null
, status text not null default 'running'
, user_id uuid
, session_id text
, kb_id uuid
, total_tokens integer
, cost_usd numeric(10, 6)
, error_type text
, error_message text
, attributes jsonb not null default '{}'::jsonb
-- A unique key on a hypertable must contain the time column; (trace_id, started_at) also makes
-- re-delivered traces idempotent (upsert on the primary key).
, constraint traces_pkey primary key (trace_id, started_at)
, constraint traces_trace_id_format check (trace_id ~ '^[0-9a-f]{32}$')
, constraint traces_trace_id_not_zero check (trace_id <> '00000000000000000000000000000000')
, constraint traces_name_not_empty check (name <> '')
-- Lowercase identifiers keep the operation_type dimension of metrics_aggregates clean.
, constraint traces_operation_type_format check (operation_type ~ '^[a-z][a-z0-9_]*$')
, constraint traces_status_valid check (status in ('running', 'ok', 'error'))
, constraint traces_ended_at_not_before_started_at check (ended_at >= started_at)
, constraint traces_duration_ms_non_negative check (duration_ms >= 0)
, constraint traces_total_tokens_non_negative check (total_tokens >= 0)
, constraint traces_cost_usd_non_negative check (cost_usd >= 0)
, constraint traces_session_id_not_empty check (session_id <> '')
, constraint traces_attributes_is_object check (pg_catalog.jsonb_typeof(attributes) = 'object')
);

select public.create_hypertable
( 'observability.traces'
, public.by_range('started_at', interval '1 day')
, create_default_indexes => false
, if_not_exists => true
);

-- Lookup by trace_id is served by traces_pkey (trace_id leads). Each index below exists for a
-- query pattern named in its comment (sql/idempotent/002-comments.sql).

-- Recent traces, and every per-bucket rollup over all traces (time window scans).
create index traces_started_at_idx on observability.traces (started_at);
-- Rollups and dashboards filtered by operation type over a time window.
create index traces_operation_type_started_at_idx
  on observability.traces (operation_type, started_at);
-- Per-user history and the user dimension; partial, because anonymous traces have no user.
create index traces_user_id_started_at_idx
  on observability.traces (user_id, started_at) where user_id is not null;
-- Per-knowledge-base dashboards and the kb dimension; partial, as many traces use no KB.
create index traces_kb_id_started_at_idx
  on observability.traces (kb_id, started_at) where kb_id is not null;
-- Replaying a conversation: all traces of one session in order.
create index traces_session_id_started_at_idx
  on observability.traces (session_id, started_at) where session_id is not null;

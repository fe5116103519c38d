-- One row per external observability provider that traces are exported to (for example
-- Langfuse or an OTLP collector): the export watermark and the health of the export job.
-- A small, frequently updated table, so a plain table and not a hypertable.
create table observability.provider_sync_status
( id uuid not null default pg_catalog.gen_random_uuid()
, provider_name text not null
, status text not null default 'pending'
, synced_through timestamptz
, last_attempt_at timestamptz
, last_success_at timestamptz
, records_synced bigint not null default 0
, consecutive_failures integer not null default 0
, last_error text
, created_at timestamptz not null default pg_catalog.now()
, updated_at timestamptz not null default pg_catalog.now()
, constraint provider_sync_status_pkey primary key (id)
, constraint provider_sync_status_provider_name_key unique (provider_name)
, constraint provider_sync_status_provider_name_not_empty check (provider_name <> '')
, constraint provider_sync_status_status_valid check
    (status in ('pending', 'syncing', 'synced', 'failed', 'disabled'))
, constraint provider_sync_status_records_synced_non_negative check (records_synced >= 0)
, constraint provider_sync_status_consecutive_failures_non_negative check
    (consecutive_failures >= 0)
, constraint provider_sync_status_updated_at_not_before_created_at check
    (updated_at >= created_at)
);

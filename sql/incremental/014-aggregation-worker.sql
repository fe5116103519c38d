-- State of the metrics aggregation worker (worker/aggregation/).
--
-- metrics_aggregates also takes document-event rows, broken down by processing step.
alter table observability.metrics_aggregates
  drop constraint metrics_aggregates_dimension_type_valid;
alter table observability.metrics_aggregates
  add constraint metrics_aggregates_dimension_type_valid check
    (dimension_type in
      ('overall', 'operation_type', 'model', 'kb', 'user', 'provider', 'event_type'));

-- One row per aggregation run: scheduled runs of the Celery task and backfills. `python -m worker
-- status` reads the last success per granularity from here, and a backfill resumes from
-- done_until of its unfinished run. Small and updated in place, so a plain table.
create table observability.aggregation_runs
( id bigint generated always as identity
, kind text not null
, granularity text not null
, range_start timestamptz not null
, range_end timestamptz not null
, done_until timestamptz not null
, status text not null default 'running'
, buckets integer not null default 0
, metrics_created bigint not null default 0
, metrics_updated bigint not null default 0
, metrics_deleted bigint not null default 0
, error text
, started_at timestamptz not null default pg_catalog.now()
, finished_at timestamptz
, constraint aggregation_runs_pkey primary key (id)
, constraint aggregation_runs_kind_valid check (kind in ('scheduled', 'backfill'))
, constraint aggregation_runs_granularity_valid check (granularity in ('hour', 'day', 'week'))
, constraint aggregation_runs_status_valid check
    (status in ('running', 'succeeded', 'failed', 'interrupted'))
, constraint aggregation_runs_range_ordered check (range_start < range_end)
, constraint aggregation_runs_done_until_within_range check
    (done_until >= range_start and done_until <= range_end)
, constraint aggregation_runs_finished_when_not_running check
    ((status = 'running') = (finished_at is null))
);

create index aggregation_runs_granularity_started_at_idx
  on observability.aggregation_runs (granularity, started_at);

-- Leases that keep two backfills (or a backfill and a scheduled run) of one granularity from
-- working at the same time. A lease rather than a session advisory lock: on the embedded engine
-- every client shares one backend, which grants a session advisory lock it already holds to
-- anyone who asks. A lease that is not renewed expires, so a killed worker blocks nobody for
-- longer than its time to live.
create table observability.worker_leases
( name text not null
, holder text not null
, task_id text
, acquired_at timestamptz not null default pg_catalog.now()
, expires_at timestamptz not null
, constraint worker_leases_pkey primary key (name)
, constraint worker_leases_expires_after_acquired check (expires_at > acquired_at)
);

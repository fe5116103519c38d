-- Documentation of the aggregation worker's tables (sql/incremental/014-aggregation-worker.sql).

comment on table observability.aggregation_runs is
  'One row per aggregation run of the worker (scheduled Celery runs and backfills): window, '
  'progress and outcome. python -m worker status reads the last success per granularity here; '
  'a backfill resumes from done_until.';
comment on column observability.aggregation_runs.kind is
  'scheduled (the Celery beat task over the latest complete buckets) or backfill.';
comment on column observability.aggregation_runs.done_until is
  'Buckets before this time are refreshed and synced into metrics_aggregates.';
comment on column observability.aggregation_runs.status is
  'running, succeeded, failed (error says why) or interrupted (stopped, or its worker died).';
comment on column observability.aggregation_runs.metrics_created is
  'metrics_aggregates rows inserted; metrics_updated and metrics_deleted count rows changed and '
  'rows removed because their rolled-up source is gone.';
comment on index observability.aggregation_runs_granularity_started_at_idx is
  'Last run and last success per granularity (status, health metrics at worker start-up).';
comment on table observability.worker_leases is
  'Leases that keep two aggregation runs of one granularity from working at once. Held while a '
  'run works and renewed after every batch; a lease past expires_at is free, so a killed worker '
  'blocks others for at most its time to live.';
comment on index observability.aggregation_runs_pkey is 'A run by its id (the summary run_id).';
comment on index observability.worker_leases_pkey is
  'One lease per name (aggregation:<granularity>): taking it is an insert on conflict.';
comment on column observability.worker_leases.task_id is
  'The Celery task id when a task holds the lease: the same task delivered again (its worker '
  'died) takes the lease over at once instead of waiting for it to expire.';

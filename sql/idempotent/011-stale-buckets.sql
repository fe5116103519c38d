-- Documentation of the late-data notes (sql/incremental/019-stale-buckets.sql).

comment on table observability.stale_buckets is
  'Closed hour, day and week buckets that raw rows were written into late (noted by triggers '
  'on traces, spans and document_events, and by the bulk writer for rows it deletes): their '
  'metrics_aggregates rows may be stale until the next scheduled run of that granularity '
  'refreshes and syncs them and deletes the notes it read.';
comment on column observability.stale_buckets.bucket is
  'Start of the bucket (time_bucket of the granularity; weeks start on Monday, UTC).';
comment on column observability.stale_buckets.noted_at is
  'Statement time of the write that noted the bucket; one bucket may be noted many times.';
comment on index observability.stale_buckets_pkey is
  'A note by its id: a run deletes exactly the notes it read.';
comment on index observability.stale_buckets_granularity_bucket_idx is
  'The notes of one granularity in bucket order, read by every scheduled run.';
comment on function observability.note_stale(timestamptz[]) is
  'Notes the closed hour, day and week buckets holding these times as stale; returns how many '
  'notes it wrote. Call it after deleting raw rows by hand: no trigger sees a DELETE.';
comment on function observability.note_stale_rows() is
  'Trigger: notes the closed buckets that a statement''s inserted or updated rows lie in.';

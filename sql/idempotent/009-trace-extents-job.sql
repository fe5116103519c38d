-- The daily job that prunes observability.trace_extents (sql/incremental/016-trace-extents.sql)
-- as retention drops raw chunks.
select public.add_job('observability.prune_trace_extents'::regproc, interval '1 day')
where not exists (
  select from timescaledb_information.jobs as j
  where j.proc_schema = 'observability' and j.proc_name = 'prune_trace_extents'
);

comment on table observability.trace_extents is
  'Earliest and latest started_at of the spans and trace rows of each trace, kept by the '
  'writers: they look for a trace''s stored rows in the chunks of that range only.';
comment on procedure observability.prune_trace_extents(integer, jsonb) is
  'Job: deletes the trace ranges that end before the oldest chunk of spans and traces.';
comment on index observability.trace_extents_pkey is
  'A trace''s range by its id: the writers'' first lookup before they look in the chunks.';
comment on index observability.trace_extents_last_started_at_idx is
  'Pruning the ranges that retention has overtaken (observability.prune_trace_extents).';

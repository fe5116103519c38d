-- Where in time the rows of each trace lie: the earliest and latest started_at of its spans and
-- trace rows. Hypertable indexes are per chunk, so finding a trace's stored rows by id alone
-- means one index probe in every chunk; the writers read this table first (one probe in one
-- global index) and look in the chunks of that range only, or nowhere for a trace never seen.
-- The writers keep it up to date in the transaction that writes the rows, under the trace's
-- lock (worker/ingest/traces.py); a row only ever widens. Plain table: one row per trace.
create table observability.trace_extents
( trace_id text not null
, first_started_at timestamptz not null
, last_started_at timestamptz not null
, constraint trace_extents_pkey primary key (trace_id)
, constraint trace_extents_first_not_after_last check (first_started_at <= last_started_at)
);

-- Pruning: rows whose whole range retention has dropped.
create index trace_extents_last_started_at_idx
  on observability.trace_extents (last_started_at);

-- The traces written before this table existed.
insert into observability.trace_extents (trace_id, first_started_at, last_started_at)
select r.trace_id, pg_catalog.min(r.started_at), pg_catalog.max(r.started_at)
from (
  select s.trace_id, s.started_at from observability.spans as s
  union all
  select t.trace_id, t.started_at from observability.traces as t
) as r
group by r.trace_id;

-- Deletes the ranges that end before the oldest chunk of spans and traces: retention has
-- dropped every row they point at. Run by a job (sql/idempotent/009-trace-extents-job.sql).
create procedure observability.prune_trace_extents(job_id integer, config jsonb)
language plpgsql as $$
declare
  oldest timestamptz;
begin
  select pg_catalog.min(c.range_start) into oldest
  from timescaledb_information.chunks as c
  where c.hypertable_schema = 'observability' and c.hypertable_name in ('spans', 'traces');
  delete from observability.trace_extents as e
  where oldest is null or e.last_started_at < oldest;
end
$$;

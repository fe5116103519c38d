-- Late data: buckets whose rolled-up rows in metrics_aggregates may be stale because raw rows
-- were written into them after they had closed.
--
-- A scheduled run of the worker refreshes and syncs only the latest two complete buckets of its
-- granularity, and the refresh policies reach back a fixed window. A row written into an older
-- bucket (yesterday, a compressed chunk, last month) is in TimescaleDB's own invalidation log,
-- so a refresh over that bucket brings the continuous aggregates right, but nothing refreshed
-- it and nothing copied it into metrics_aggregates. Now every statement that writes a raw row
-- into a closed bucket notes that bucket here, per granularity, in its own transaction; the
-- next scheduled run of each granularity refreshes the rollups over the noted buckets, syncs
-- them into metrics_aggregates and deletes the notes it read (worker/aggregation/stale.py).
--
-- Append-only from the writers' side: no unique key, so concurrent writers never wait for each
-- other here, and a run deletes exactly the notes it read (by id): a note committed while the
-- run works stays for the next run. Plain table: small, emptied by every scheduled run.
create table observability.stale_buckets
( id bigint generated always as identity
, granularity text not null
, bucket timestamptz not null
, noted_at timestamptz not null default pg_catalog.statement_timestamp()
, constraint stale_buckets_pkey primary key (id)
, constraint stale_buckets_granularity_valid check (granularity in ('hour', 'day', 'week'))
);

create index stale_buckets_granularity_bucket_idx
  on observability.stale_buckets (granularity, bucket);

-- Notes the hour, day and week buckets holding these times that have closed (the bucket that
-- holds the statement's time is still open: scheduled runs complete it once it has closed).
-- Returns how many notes it wrote. Called by the triggers below, by the bulk writer for rows
-- it deletes, and by hand after a plain DELETE (which no trigger can see; see the README).
create function observability.note_stale(times timestamptz[])
returns integer
language sql
set search_path = pg_catalog, pg_temp
as $$
  with hours as (
    select distinct public.time_bucket(interval '1 hour', t.t) as hour
    from pg_catalog.unnest(times) as t (t)
    where t.t is not null and pg_catalog.isfinite(t.t)
  ), noted as (
    -- every granularity of the catalogue (sql/incremental/017-granularities.sql)
    insert into observability.stale_buckets (granularity, bucket)
    select distinct g.name, public.time_bucket(g.bucket_width, h.hour)
    from hours as h
    cross join observability.granularities as g
    where public.time_bucket(g.bucket_width, h.hour)
      < public.time_bucket(g.bucket_width, pg_catalog.statement_timestamp())
    returning 1
  )
  select pg_catalog.count(*)::integer from noted
$$;

-- Statement-level triggers with transition tables: one pass over the statement's rows, which
-- skips every row of the open hour (the common case) before anything is noted. UPDATE notes
-- where a row was and where it is now. DELETE cannot be seen this way: TimescaleDB refuses
-- transition tables on DELETE triggers of hypertables with compression.
create function observability.note_stale_rows()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  open_hour constant timestamptz :=
    public.time_bucket(interval '1 hour', pg_catalog.statement_timestamp());
  hours timestamptz[];
begin
  if tg_table_name = 'document_events' then
    if tg_op = 'UPDATE' then
      hours := array(
        select distinct public.time_bucket(interval '1 hour', r.created_at)
        from (
          select o.created_at from old_rows as o
          union all
          select n.created_at from new_rows as n
        ) as r
        where r.created_at < open_hour);
    else
      hours := array(
        select distinct public.time_bucket(interval '1 hour', n.created_at)
        from new_rows as n where n.created_at < open_hour);
    end if;
  elsif tg_op = 'UPDATE' then
    hours := array(
      select distinct public.time_bucket(interval '1 hour', r.started_at)
      from (
        select o.started_at from old_rows as o
        union all
        select n.started_at from new_rows as n
      ) as r
      where r.started_at < open_hour);
  else
    hours := array(
      select distinct public.time_bucket(interval '1 hour', n.started_at)
      from new_rows as n where n.started_at < open_hour);
  end if;
  if pg_catalog.cardinality(hours) > 0 then
    perform observability.note_stale(hours);
  end if;
  return null;
end
$$;

create trigger traces_note_stale_insert
  after insert on observability.traces
  referencing new table as new_rows
  for each statement execute function observability.note_stale_rows();
create trigger traces_note_stale_update
  after update on observability.traces
  referencing old table as old_rows new table as new_rows
  for each statement execute function observability.note_stale_rows();

create trigger spans_note_stale_insert
  after insert on observability.spans
  referencing new table as new_rows
  for each statement execute function observability.note_stale_rows();
create trigger spans_note_stale_update
  after update on observability.spans
  referencing old table as old_rows new table as new_rows
  for each statement execute function observability.note_stale_rows();

create trigger document_events_note_stale_insert
  after insert on observability.document_events
  referencing new table as new_rows
  for each statement execute function observability.note_stale_rows();
create trigger document_events_note_stale_update
  after update on observability.document_events
  referencing old table as old_rows new table as new_rows
  for each statement execute function observability.note_stale_rows();

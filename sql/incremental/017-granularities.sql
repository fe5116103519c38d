-- The catalogue of rollup granularities: one row per bucket size, read by the refresh policies
-- (sql/idempotent/004-rollup-policies.sql), the views that list rollups, and the worker, whose
-- Python mirror (worker/models/granularities.py) a test holds equal to this table.
--
-- The continuous aggregates themselves (incremental 010-012) spell out their bucket widths: a
-- continuous aggregate's query cannot be altered, only dropped and created again, which would
-- lose the materialized buckets whose raw rows retention has already dropped. So their daily
-- and weekly definitions, near copies of each other, stay as released; a test checks that each
-- one's bucket width is the one named here.
create table observability.granularities
( name text not null
, position smallint not null
, level text not null
, bucket_width interval not null
, refresh_start_offset interval not null
, refresh_end_offset interval not null
, refresh_schedule interval not null
, constraint granularities_pkey primary key (name)
, constraint granularities_position_key unique (position)
, constraint granularities_level_key unique (level)
, constraint granularities_offsets_check check (refresh_start_offset > refresh_end_offset)
);

insert into observability.granularities
  (name, position, level, bucket_width, refresh_start_offset, refresh_end_offset,
   refresh_schedule)
values
  ('hour', 1, 'hourly', interval '1 hour', interval '3 days', interval '0', interval '5 minutes'),
  ('day', 2, 'daily', interval '1 day', interval '5 days', interval '1 hour', interval '1 hour'),
  ('week', 3, 'weekly', interval '1 week', interval '3 weeks', interval '1 day',
    interval '6 hours');

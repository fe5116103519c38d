-- Columnar compression of the raw hypertables that feed the rollups. The compression and
-- retention policies, with their configurable ages, are in sql/idempotent/004-rollup-policies.sql.
-- segmentby: the low-cardinality column dashboards and rollups filter on, so that a compressed
-- segment holds one operation type, span type or processing step. orderby: newest first, then
-- the rest of the primary key, which compressed chunks still enforce.

alter table observability.traces set
( timescaledb.compress
, timescaledb.compress_segmentby = 'operation_type'
, timescaledb.compress_orderby = 'started_at desc, trace_id'
);

alter table observability.spans set
( timescaledb.compress
, timescaledb.compress_segmentby = 'span_type'
, timescaledb.compress_orderby = 'started_at desc, trace_id, span_id'
);

alter table observability.document_events set
( timescaledb.compress
, timescaledb.compress_segmentby = 'event_type'
, timescaledb.compress_orderby = 'created_at desc, id'
);

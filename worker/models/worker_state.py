from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import (
    BigInteger,
    Identity,
    Index,
    Interval,
    SmallInteger,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from worker.models.base import Base

RUN_KINDS = ("scheduled", "backfill")
RUN_STATUSES = ("running", "succeeded", "failed", "interrupted")


class AggregationRun(Base):
    __tablename__ = "aggregation_runs"
    __table_args__ = (
        Index("aggregation_runs_granularity_started_at_idx", "granularity", "started_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    kind: Mapped[str]
    granularity: Mapped[str]
    range_start: Mapped[datetime]
    range_end: Mapped[datetime]
    done_until: Mapped[datetime]
    status: Mapped[str] = mapped_column(default="running", server_default=text("'running'::text"))
    buckets: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    metrics_created: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    metrics_updated: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    metrics_deleted: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    error: Mapped[str | None]
    started_at: Mapped[datetime] = mapped_column(server_default=func.now())
    finished_at: Mapped[datetime | None]


class WorkerLease(Base):
    __tablename__ = "worker_leases"

    name: Mapped[str] = mapped_column(primary_key=True)
    holder: Mapped[str]
    task_id: Mapped[str | None]
    acquired_at: Mapped[datetime] = mapped_column(server_default=func.now())
    expires_at: Mapped[datetime]


class TraceExtent(Base):
    """Earliest and latest start of a trace's stored rows, kept by the writers."""

    __tablename__ = "trace_extents"
    __table_args__ = (Index("trace_extents_last_started_at_idx", "last_started_at"),)

    trace_id: Mapped[str] = mapped_column(primary_key=True)
    first_started_at: Mapped[datetime]
    last_started_at: Mapped[datetime]


class GranularityRow(Base):
    """A row of the granularity catalogue (mirrored by worker/models/granularities.py)."""

    __tablename__ = "granularities"
    __table_args__ = (
        UniqueConstraint("position", name="granularities_position_key"),
        UniqueConstraint("level", name="granularities_level_key"),
    )

    name: Mapped[str] = mapped_column(primary_key=True)
    position: Mapped[int] = mapped_column(SmallInteger)
    level: Mapped[str]
    bucket_width: Mapped[timedelta] = mapped_column(Interval)
    refresh_start_offset: Mapped[timedelta] = mapped_column(Interval)
    refresh_end_offset: Mapped[timedelta] = mapped_column(Interval)
    refresh_schedule: Mapped[timedelta] = mapped_column(Interval)


class StaleBucket(Base):
    """A closed bucket that rows were written into late, waiting for a scheduled run."""

    __tablename__ = "stale_buckets"
    __table_args__ = (Index("stale_buckets_granularity_bucket_idx", "granularity", "bucket"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    granularity: Mapped[str]
    bucket: Mapped[datetime]
    noted_at: Mapped[datetime] = mapped_column(server_default=func.statement_timestamp())

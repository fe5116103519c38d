from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

# What the generator sends, path by path, and in which order. The oracle (expected.py) reads
# only these objects: never the database's rows.

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INT4_MAX = 2**31 - 1

SDK = "sdk"  # the official OTLP/HTTP protobuf exporter
JSON = "json"  # OTLP/JSON posted to the same endpoint
BULK = "bulk"  # worker.ingest.write_batch
PATHS = (SDK, JSON, BULK)


def ns_to_datetime(ns: int) -> datetime:
    return EPOCH + timedelta(microseconds=ns // 1000)


def datetime_to_ns(moment: datetime) -> int:
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


@dataclass(frozen=True)
class OtlpEvent:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass(frozen=True)
class OtlpSpan:
    """One version of a span as an OpenTelemetry SDK would export it."""

    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int | None  # None: still running
    attributes: dict[str, Any]
    events: tuple[OtlpEvent, ...] = ()
    status: str = "unset"  # unset | ok | error
    status_message: str | None = None
    resource: dict[str, Any] = field(default_factory=lambda: {"service.name": "rag-api"})


@dataclass(frozen=True)
class OtlpExport:
    """One call of the exporter (or one JSON POST): a list of span versions."""

    path: str  # SDK or JSON
    spans: tuple[OtlpSpan, ...]


@dataclass(frozen=True)
class BulkExport:
    """One call of write_batch with items as an application passes them."""

    traces: tuple[dict[str, Any], ...] = ()
    spans: tuple[dict[str, Any], ...] = ()
    document_events: tuple[dict[str, Any], ...] = ()
    path: str = BULK


Export = OtlpExport | BulkExport


@dataclass(frozen=True)
class Step:
    """Exports sent at the same time, one thread each. The generator puts only exports that
    cannot conflict into one step (identical copies, or disjoint spans), so the final state does
    not depend on the order in which they land."""

    exports: tuple[Export, ...]
    label: str = ""


@dataclass
class Traffic:
    seed: int
    now: datetime  # the time the generator placed everything relative to
    phases: list[list[Step]]  # phase 1, then (after a sync) phase 2: late and updated data
    shapes: dict[str, int]  # how many times each guaranteed shape was generated
    start: datetime  # the earliest accepted time (for the backfill window)
    end: datetime  # the latest accepted time
    dst: tuple[str, datetime] | None = None  # a zone changing its UTC offset inside the range
    shape_of: dict[str, str] = field(default_factory=dict)  # trace id -> the shape it was made as
    notes: list[str] = field(default_factory=list)

    def exports(self, phase: int | None = None) -> list[Export]:
        phases = self.phases if phase is None else self.phases[phase : phase + 1]
        return [e for steps in phases for step in steps for e in step.exports]

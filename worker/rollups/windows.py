from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from worker.models.granularities import BY_NAME, GRANULARITIES

BUCKET_WIDTHS: dict[str, timedelta] = {name: g.width for name, g in BY_NAME.items()}
# time_bucket('1 week', ...) puts week boundaries on Mondays, UTC.
_MONDAY = datetime(2000, 1, 3, tzinfo=UTC)


class InvalidWindow(ValueError):
    """A window the worker refuses: unknown granularity, end not after start, naive times."""


@dataclass(frozen=True)
class Window:
    granularity: str
    start: datetime  # first bucket start, inclusive
    end: datetime  # bucket boundary, exclusive

    @property
    def buckets(self) -> int:
        return int((self.end - self.start) / BUCKET_WIDTHS[self.granularity])

    def batches(self, size: int | None = None) -> Iterator[Window]:
        step = BUCKET_WIDTHS[self.granularity] * (size or BY_NAME[self.granularity].batch_buckets)
        start = self.start
        while start < self.end:
            end = min(start + step, self.end)
            yield Window(self.granularity, start, end)
            start = end

    def as_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}


def check_granularity(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise InvalidWindow(
            f"unknown granularity {granularity!r}: expected one of {', '.join(GRANULARITIES)}"
        )
    return granularity


def bucket_floor(moment: datetime, granularity: str) -> datetime:
    width = BUCKET_WIDTHS[check_granularity(granularity)]
    origin = _MONDAY if granularity == "week" else datetime(2000, 1, 1, tzinfo=UTC)
    return origin + ((_utc(moment) - origin) // width) * width


def bucket_ceil(moment: datetime, granularity: str) -> datetime:
    floor = bucket_floor(moment, granularity)
    return floor if floor == _utc(moment) else floor + BUCKET_WIDTHS[granularity]


def aligned_window(granularity: str, start: datetime, end: datetime) -> Window:
    """The whole buckets covering [start, end): start rounds down and end rounds up."""
    check_granularity(granularity)
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidWindow("start and end need a time zone (for example 2026-01-01T00:00Z)")
    if end <= start:
        raise InvalidWindow(
            f"the window ends before it starts: start {start.isoformat()}, end {end.isoformat()}"
        )
    return Window(granularity, bucket_floor(start, granularity), bucket_ceil(end, granularity))


def default_window(granularity: str, now: datetime) -> Window:
    """The latest complete bucket and the one before it, so late rows are picked up once more."""
    end = bucket_floor(now, granularity)
    return Window(granularity, end - 2 * BUCKET_WIDTHS[granularity], end)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)

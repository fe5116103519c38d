from __future__ import annotations

from datetime import timedelta

# How far ahead of the database clock a timestamp may be and still count as now: writers'
# clocks drift. Rows and buckets dated later are counted apart, never as fresh data, and a
# backfill may end this far past the bucket that holds now.
CLOCK_SKEW = timedelta(minutes=5)

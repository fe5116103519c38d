from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

# Triggers note the closed buckets that inserted and updated rows lie in
# (sql/incremental/019-stale-buckets.sql); a DELETE is seen by no trigger, so the writer notes
# the buckets of the rows it deletes itself, in the same transaction.
_NOTE = "select observability.note_stale(%s::timestamptz[])"


def note_deleted(cur: psycopg.Cursor[Any], times: Sequence[datetime]) -> None:
    """Note the buckets that deleted rows were in as stale, so scheduled runs re-sync them."""
    if times:
        cur.execute(_NOTE, [list(times)])

from __future__ import annotations

import psycopg
from psycopg_pool import PoolTimeout

# SQLSTATEs of a database that is down, starting, shutting down, out of resources or read-only
# (a standby, or a primary in read-only mode): the same request succeeds later. Deadlocks and
# serialization failures (class 40) too: the transaction was rolled back and may be repeated.
_UNAVAILABLE_CLASSES = ("08", "40", "53")
_UNAVAILABLE_STATES = ("57P01", "57P02", "57P03", "57P05", "25006")
# Errors of one row's data: bad values (22), constraints (23), limits such as an index entry
# too large (54). Splitting a batch isolates the row; any other error is not about one row.
_ROW_CLASSES = ("22", "23", "54")


def is_unavailable(exc: BaseException) -> bool:
    """The database cannot take writes now: retrying the same request later is right."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:
        # No SQLSTATE: the connection failed or was lost (OperationalError, InterfaceError).
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return state[:2] in _UNAVAILABLE_CLASSES or state in _UNAVAILABLE_STATES


def is_row_error(exc: BaseException) -> bool:
    """The database refused a value of some row, not the batch as a whole."""
    if not isinstance(exc, psycopg.Error) or exc.sqlstate is None:
        return False
    return exc.sqlstate[:2] in _ROW_CLASSES

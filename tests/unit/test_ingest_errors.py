from __future__ import annotations

import psycopg
import pytest
from psycopg import errors
from psycopg_pool import PoolTimeout

from worker.ingest.errors import is_row_error, is_unavailable


@pytest.mark.parametrize(
    "exc",
    [
        PoolTimeout("no connection within 5 s"),
        psycopg.OperationalError("connection refused"),  # from connect: no SQLSTATE
        psycopg.InterfaceError("the connection is closed"),
        errors.ConnectionFailure("08006"),
        errors.AdminShutdown("57P01"),
        errors.CannotConnectNow("57P03"),
        errors.TooManyConnections("53300"),
        errors.DiskFull("53100"),
        errors.ReadOnlySqlTransaction("25006"),
        errors.DeadlockDetected("40P01"),
    ],
)
def test_availability_errors_are_retryable(exc: Exception) -> None:
    assert is_unavailable(exc) and not is_row_error(exc)


@pytest.mark.parametrize(
    "exc",
    [
        errors.ProgramLimitExceeded("index row size exceeds btree maximum"),  # 54000
        errors.CheckViolation("23514"),
        errors.UniqueViolation("23505"),
        errors.NumericValueOutOfRange("22003"),
        errors.CharacterNotInRepertoire("22021"),
    ],
)
def test_row_errors_are_isolated_not_retried(exc: Exception) -> None:
    # ProgramLimitExceeded is an OperationalError subclass: it used to mean 503 forever.
    assert is_row_error(exc) and not is_unavailable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        errors.UndefinedTable("42P01"),
        errors.InsufficientPrivilege("42501"),
        errors.UndefinedFunction("42883"),
        errors.LockNotAvailable("55P03"),
        RuntimeError("a bug"),
    ],
)
def test_other_errors_are_neither(exc: Exception) -> None:
    assert not is_unavailable(exc) and not is_row_error(exc)

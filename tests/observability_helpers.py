from __future__ import annotations

import re
from typing import Any, TypeVar

from sqlalchemy import inspect
from sqlalchemy.orm import Session

from worker.models import Base

M = TypeVar("M", bound=Base)

TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
SPAN_ID = re.compile(r"^[0-9a-f]{16}$")
# W3C trace-context traceparent header, version 00.
TRACEPARENT = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")


def column_values(instance: Base) -> dict[str, Any]:
    state = inspect(instance)
    return {attr.key: getattr(instance, attr.key) for attr in state.mapper.column_attrs}


def primary_key(instance: Base) -> tuple[Any, ...]:
    state = inspect(instance)
    if state.identity is not None:
        return tuple(state.identity)
    return tuple(state.mapper.primary_key_from_instance(instance))


def insert(session: Session, model: type[M], row: dict[str, Any]) -> M:
    instance = model(**row)
    session.add(instance)
    session.commit()
    return instance


def reload(session: Session, instance: M) -> M:
    """The row as the database has it now, not the instance from the identity map."""
    key = primary_key(instance)
    session.expunge_all()
    fresh = session.get(type(instance), key)
    assert fresh is not None, f"{type(instance).__name__} {key} not found"
    return fresh


def assert_row_equals(instance: Base, expected: dict[str, Any]) -> None:
    actual = column_values(instance)
    different = {
        key: (actual[key], value) for key, value in expected.items() if actual[key] != value
    }
    assert not different, f"columns differ (database, expected): {different}"

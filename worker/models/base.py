from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import DateTime, Double, MetaData, Numeric, Text, Uuid, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, MappedColumn, mapped_column

SCHEMA = "observability"


class Base(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(schema=SCHEMA, naming_convention={"pk": "%(table_name)s_pkey"})
    type_annotation_map = {
        str: Text(),
        datetime: DateTime(timezone=True),
        uuid.UUID: Uuid(),
        # Every money column is USD with micro-dollar precision (sql: numeric(10, 6)).
        Decimal: Numeric(10, 6),
        float: Double(),
        dict[str, Any]: JSONB(),
        list[dict[str, Any]]: JSONB(),
    }
    # Server defaults (ids, created_at) come back with RETURNING at insert time, so instances
    # stay usable under AsyncSession without an implicit lazy load.
    __mapper_args__ = {"eager_defaults": True}


# Server defaults repeat the SQL text exactly as PostgreSQL reports it back, so that alembic's
# comparison of models and database sees no difference.
def uuid_pk() -> MappedColumn[Any]:
    return mapped_column(
        primary_key=True, default=uuid.uuid4, server_default=text("gen_random_uuid()")
    )


def created_at_column(*, primary_key: bool = False) -> MappedColumn[Any]:
    return mapped_column(primary_key=primary_key, server_default=func.now())


def updated_at_column() -> MappedColumn[Any]:
    return mapped_column(server_default=func.now(), onupdate=func.now())


def json_object_column() -> MappedColumn[Any]:
    return mapped_column(default=dict, server_default=text("'{}'::jsonb"))


def json_array_column() -> MappedColumn[Any]:
    return mapped_column(default=list, server_default=text("'[]'::jsonb"))


def status_column(default: str) -> MappedColumn[Any]:
    return mapped_column(default=default, server_default=text(f"'{default}'::text"))

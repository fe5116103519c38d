from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import Numeric
from sqlalchemy.orm import Mapped, mapped_column

from worker.models.base import Base


class ModelPrice(Base):
    """USD per million tokens of one model from effective_from on (sql/incremental/015)."""

    __tablename__ = "model_prices"

    model: Mapped[str] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(primary_key=True)
    effective_from: Mapped[datetime] = mapped_column(primary_key=True)
    input_usd_per_million: Mapped[Decimal] = mapped_column(Numeric(12, 6))
    output_usd_per_million: Mapped[Decimal] = mapped_column(Numeric(12, 6))

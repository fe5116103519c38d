from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import psycopg

from worker.ingest.items import SPAN
from worker.ingest.validation import COST_LIMIT, MICRO

# Spans whose cost the writer (or recost) computed from observability.model_prices carry this
# attribute; a cost the application sent is never marked, and recost leaves it alone.
COST_SOURCE_KEY = "observability.cost_source"
COST_SOURCE_PRICES = "model_prices"
# Traces whose cost_usd is the sum of their spans' costs (the OTLP endpoint computes it) carry
# the same key with this value; recost sums them again. Other trace costs are the application's.
COST_SOURCE_SPANS = "spans"
_MARK = f'"{COST_SOURCE_KEY}":"{COST_SOURCE_PRICES}"'
MILLION = Decimal(1_000_000)

# Ordered as observability.model_price_at chooses: the latest effective_from first, ties by
# provider. The rule itself lives in SQL (sql/idempotent/006-model-prices.sql); the writer
# applies it here, in Python, because a per-row lookup in the upsert cost about as much engine
# time as all of the writer's Python work (tests compare both on the same spans).
PRICES_SQL = """
select p.model, p.provider, p.effective_from, p.input_usd_per_million, p.output_usd_per_million
from observability.model_prices as p
where p.model = any(%s)
order by p.effective_from desc, p.provider
"""

# Provider names as instrumentations write them (gen_ai.provider.name, gen_ai.system, ...) ->
# the provider of model_prices rows, by observability.canonical_provider
# (sql/idempotent/006-model-prices.sql), the one table of provider aliases.
CANONICAL_SQL = """
select p.name, observability.canonical_provider(p.name)
from pg_catalog.unnest(%s::text[]) as p (name)
"""


_COLUMNS = {name: i for i, name in enumerate(SPAN.column_names)}
_MODEL, _PROVIDER = _COLUMNS["model"], _COLUMNS["provider"]
_TRACE, _SPAN = _COLUMNS["trace_id"], _COLUMNS["span_id"]
_STARTED, _COST, _ATTRIBUTES = _COLUMNS["started_at"], _COLUMNS["cost_usd"], _COLUMNS["attributes"]
_INPUT, _OUTPUT = _COLUMNS["input_tokens"], _COLUMNS["output_tokens"]


def _needs_price(row: tuple[Any, ...]) -> bool:
    return (
        row[_COST] is None
        and row[_MODEL] is not None
        and (row[_INPUT] is not None or row[_OUTPUT] is not None)
    )


def price_spans(
    cur: psycopg.Cursor[Any], rows: list[tuple[Any, ...]], warnings: list[str] | None = None
) -> list[tuple[Any, ...]]:
    """Span rows (in SPAN column order) with cost_usd and the cost mark filled in where the
    span had no cost, names a model with a price in effect at its start, and has tokens. A
    cost past the column's range stays NULL, with a warning in warnings."""
    models = {row[_MODEL] for row in rows if _needs_price(row)}
    if not models:
        return rows
    prices: dict[str, list[tuple[str, Any, Decimal, Decimal]]] = {}
    for model, provider, effective_from, inp, out in cur.execute(PRICES_SQL, [list(models)]):
        prices.setdefault(model, []).append((provider, effective_from, inp, out))
    if not prices:
        return rows
    names = list({row[_PROVIDER] for row in rows if row[_PROVIDER] is not None})
    canonical = dict(cur.execute(CANONICAL_SQL, [names]).fetchall()) if names else {}
    priced = []
    for row in rows:
        candidates = prices.get(row[_MODEL]) if _needs_price(row) else None
        if candidates:
            cost = _cost(row, candidates, canonical.get(row[_PROVIDER]))
            if cost is not None and cost < COST_LIMIT:
                row = _with_cost(row, cost)
            elif cost is not None and warnings is not None:
                warnings.append(
                    f"span {row[_TRACE]}/{row[_SPAN]}: cost_usd stored as NULL: its price comes "
                    f"to {cost} USD, more than the column holds ({COST_LIMIT - MICRO})"
                )
        priced.append(row)
    return priced


def _cost(
    row: tuple[Any, ...], candidates: list[tuple[str, Any, Decimal, Decimal]], wanted: str | None
) -> Decimal | None:
    started = row[_STARTED]
    for provider, effective_from, inp, out in candidates:
        if effective_from <= started and (wanted is None or provider == wanted):
            total = (row[_INPUT] or 0) * inp + (row[_OUTPUT] or 0) * out
            # round() of PostgreSQL numeric: half away from zero.
            return (total / MILLION).quantize(MICRO, rounding=ROUND_HALF_UP)
    return None


def _with_cost(row: tuple[Any, ...], cost: Decimal) -> tuple[Any, ...]:
    attributes: str = row[_ATTRIBUTES]
    # Appended to the JSON text; a key given twice keeps its last value in jsonb.
    marked = "{" + _MARK + "}" if attributes == "{}" else attributes[:-1] + "," + _MARK + "}"
    values = list(row)
    values[_COST], values[_ATTRIBUTES] = cost, marked
    return tuple(values)

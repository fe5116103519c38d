from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from worker.rollups.windows import bucket_floor

DAYS = 7
# Every generated trace carries this attribute (with the seed): it is how a later run recognises
# the demo's rows in a kept data directory.
MARKER = "demo.seed"
# And the traffic rate it was generated with, so a later run can say what it reuses.
RATE_MARKER = "demo.traces_per_hour"
_NAMESPACE = uuid.UUID("6f1c8f0e-5d2a-4b8e-9a57-0c4d2b7e1a93")


@dataclass(frozen=True)
class Model:
    provider: str
    name: str
    median_ms: float  # latency of a call with a typical answer
    ms_per_output_token: float
    sigma: float  # spread of the log-normal latency


# Names the price table (sql/incremental/015-model-prices.sql) knows, so the writer prices them.
MODELS = (
    Model("openai", "gpt-4o", 1400, 9.0, 0.35),
    Model("openai", "gpt-4o-mini", 650, 5.0, 0.30),
    Model("anthropic", "claude-3-5-sonnet", 1700, 11.0, 0.40),
    Model("google", "gemini-1.5-flash", 450, 3.5, 0.45),
)
EMBEDDING_MODEL = Model("openai", "text-embedding-3-small", 35, 0.0, 0.4)
OPERATIONS = ("chat", "search", "generation")
# Which model answers, per operation (weights in MODELS order).
_MODEL_WEIGHTS = {
    "chat": (20, 40, 25, 15),
    "search": (5, 45, 5, 45),
    "generation": (40, 10, 45, 5),
}
_OPERATION_WEIGHTS = (55, 25, 20)
# (input tokens median, output tokens median) of the answering call, per operation.
_TOKENS = {"chat": (1800, 260), "search": (900, 90), "generation": (3200, 900)}
KNOWLEDGE_BASES = ("product-docs", "support-tickets", "engineering-wiki", "legal", "hr-policies")
_KB_WEIGHTS = (35, 25, 20, 8, 12)
USERS = 50
# A few heavy users and a long tail.
_USER_WEIGHTS = tuple(1 / (n + 1) ** 0.8 for n in range(USERS))
DOCUMENT_STEPS = ("parse", "chunk", "embed")
_LLM_ERRORS = (
    ("rate_limit_exceeded", "429 Too Many Requests: rate limit reached for requests"),
    ("timeout", "the provider did not answer within 30 s"),
    ("context_length_exceeded", "prompt is longer than the model's context window"),
)
# One model has a bad afternoon: slower and failing more often, so the dashboard shows it.
INCIDENT_MODEL = "claude-3-5-sonnet"
_INCIDENT_DAY, _INCIDENT_HOURS = 4, range(13, 16)


def kb_id(name: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"kb:{name}")


def user_id(number: int) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"user:{number}")


KB_NAMES: dict[str, str] = {str(kb_id(name)): name for name in KNOWLEDGE_BASES}


@dataclass
class Batch:
    traces: list[dict[str, Any]] = field(default_factory=list)
    spans: list[dict[str, Any]] = field(default_factory=list)
    chat_messages: list[dict[str, Any]] = field(default_factory=list)
    document_events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return (
            len(self.traces) + len(self.spans) + len(self.chat_messages) + len(self.document_events)
        )


Prices = Mapping[str, tuple[Decimal, Decimal]]  # model -> USD per million input, output tokens


def demo_window(now: datetime, days: int = DAYS) -> tuple[datetime, datetime]:
    """days ending at the last full hour before now."""
    end = bucket_floor(now, "hour")
    return end - timedelta(days=days), end


def token_cost(prices: Prices, model: str, input_tokens: int, output_tokens: int) -> Decimal:
    """As observability.token_cost_usd computes it: micro-dollars, halves rounded up."""
    price_in, price_out = prices.get(model, (Decimal(0), Decimal(0)))
    cost = (input_tokens * price_in + output_tokens * price_out) / Decimal(1_000_000)
    return cost.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


def hourly_load(hour: datetime) -> float:
    """Relative traffic in an hour (UTC): a working-day peak around 14:00, quieter weekends."""
    daily = 0.25 + math.exp(-(((hour.hour - 14) / 4.5) ** 2)) * 1.6
    return daily * (0.55 if hour.weekday() >= 5 else 1.0)


class Generator:
    """Deterministic LLM/RAG traffic: the same seed and window give the same rows."""

    def __init__(self, seed: int, prices: Prices, traces_per_hour: float) -> None:
        if traces_per_hour <= 0:
            raise ValueError(f"traces_per_hour must be positive, got {traces_per_hour}")
        self.seed = seed
        self.prices = prices
        self.traces_per_hour = traces_per_hour
        self.rng = random.Random(seed)
        self._ids = random.Random(seed ^ 0x5EED)

    def hours(self, start: datetime, end: datetime) -> Iterator[tuple[datetime, Batch]]:
        """One batch per hour of [start, end), traffic following hourly_load."""
        mean_load = sum(hourly_load(start + timedelta(hours=h)) for h in range(168)) / 168
        hour = start
        incident_start = start + timedelta(days=_INCIDENT_DAY)
        while hour < end:
            expected = self.traces_per_hour * hourly_load(hour) / mean_load
            count = max(1, round(self.rng.gauss(expected, math.sqrt(expected))))
            incident = hour.date() == incident_start.date() and hour.hour in _INCIDENT_HOURS
            batch = Batch()
            for _ in range(count):
                at = hour + timedelta(milliseconds=self.rng.randrange(3_600_000))
                self.add_trace(batch, at, incident=incident)
            for _ in range(max(1, round(count / 20))):
                at = hour + timedelta(milliseconds=self.rng.randrange(3_500_000))
                self.add_document(batch, at)
            yield hour, batch
            hour += timedelta(hours=1)

    def late_rows(self, start: datetime, end: datetime, traces: int) -> Batch:
        """Traces that arrive after their hours were aggregated (a delayed exporter)."""
        batch = Batch()
        seconds = int((end - start).total_seconds() * 1000)
        for _ in range(traces):
            at = start + timedelta(milliseconds=self.rng.randrange(seconds))
            self.add_trace(batch, at, incident=False, late=True)
        return batch

    def _trace_id(self) -> str:
        return f"{self._ids.getrandbits(128) | 1:032x}"

    def _span_id(self) -> str:
        return f"{self._ids.getrandbits(64) | 1:016x}"

    def _pick(self, items: tuple[Any, ...], weights: tuple[int, ...]) -> Any:
        return self.rng.choices(items, weights)[0]

    def _lognormal(self, median: float, sigma: float) -> float:
        return median * math.exp(self.rng.gauss(0, sigma))

    def add_trace(self, batch: Batch, at: datetime, *, incident: bool, late: bool = False) -> None:
        rng = self.rng
        operation = self._pick(OPERATIONS, _OPERATION_WEIGHTS)
        model = self._pick(MODELS, _MODEL_WEIGHTS[operation])
        kb = self._pick(KNOWLEDGE_BASES, _KB_WEIGHTS)
        user = user_id(rng.choices(range(USERS), _USER_WEIGHTS)[0])
        trace_id, root_id = self._trace_id(), self._span_id()
        # Providers are slower when everyone is busy.
        peak = 1.0 + 0.4 * min(1.0, hourly_load(at) / 1.85)
        spans: list[dict[str, Any]] = []
        cursor = at + timedelta(milliseconds=rng.randrange(2, 15))

        def child(kind: str, name: str, duration: float, **values: Any) -> dict[str, Any]:
            nonlocal cursor
            ms = max(1, int(duration))
            span = {
                "trace_id": trace_id,
                "span_id": self._span_id(),
                "parent_span_id": root_id,
                "started_at": cursor,
                "ended_at": cursor + timedelta(milliseconds=ms),
                "duration_ms": ms,
                "name": name,
                "span_type": kind,
                "status": "ok",
                **values,
            }
            cursor += timedelta(milliseconds=ms + rng.randrange(1, 6))
            spans.append(span)
            return span

        query_tokens = int(self._lognormal(24, 0.5)) + 1
        child(
            "embedding",
            f"embeddings {EMBEDDING_MODEL.name}",
            self._lognormal(EMBEDDING_MODEL.median_ms, EMBEDDING_MODEL.sigma),
            operation_name="embeddings",
            provider=EMBEDDING_MODEL.provider,
            model=EMBEDDING_MODEL.name,
            input_tokens=query_tokens,
            output_tokens=0,
        )
        retrieved = rng.choice((8, 10, 20, 25, 40))
        retrieval = child(
            "retrieval",
            f"retrieve {kb}",
            self._lognormal(60 if kb != "legal" else 140, 0.5) * peak,
            operation_name="retrieve",
            kb_id=kb_id(kb),
            documents_retrieved=retrieved,
        )
        child(
            "rerank",
            "rerank",
            self._lognormal(45 + 2 * retrieved, 0.3),
            operation_name="rerank",
            documents_retrieved=min(retrieved, 5),
        )
        in_median, out_median = _TOKENS[operation]
        input_tokens = int(self._lognormal(in_median, 0.45))
        output_tokens = int(self._lognormal(out_median, 0.6)) + 1
        slow = 2.6 if incident and model.name == INCIDENT_MODEL else 1.0
        latency = (
            (
                self._lognormal(model.median_ms, model.sigma)
                + output_tokens * model.ms_per_output_token * 0.5
            )
            * peak
            * slow
        )
        error = None
        error_rate = 0.25 if slow > 1 else 0.022
        if rng.random() < 0.006:
            retrieval.update(
                status="error",
                error_type="kb_unavailable",
                error_message=f"vector index of {kb} did not answer",
            )
            error = ("kb_unavailable", retrieval["error_message"])
        elif rng.random() < error_rate:
            error = _LLM_ERRORS[0] if slow > 1 else self._pick(_LLM_ERRORS, (60, 15, 25))
            latency = 30_000 if error[0] == "timeout" else latency * 0.1
            output_tokens = 0
        llm = child(
            "llm",
            f"chat {model.name}",
            latency,
            operation_name="chat",
            provider=model.provider,
            model=model.name,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            time_to_first_token_ms=int(latency * rng.uniform(0.12, 0.35)),
        )
        if error is not None and error[0] != "kb_unavailable":
            llm.update(status="error", error_type=error[0], error_message=error[1])
        costs = {
            id(s): token_cost(self.prices, s["model"], s["input_tokens"], s["output_tokens"])
            for s in spans
            if s.get("model")
        }
        # Most spans leave their cost to the writer's price table; a few report their own.
        if rng.random() < 0.05:
            llm["cost_usd"] = costs[id(llm)]
        ended = cursor + timedelta(milliseconds=rng.randrange(1, 20))
        duration = int((ended - at) / timedelta(milliseconds=1))
        root = {
            "trace_id": trace_id,
            "span_id": root_id,
            "started_at": at,
            "ended_at": ended,
            "duration_ms": duration,
            "name": operation,
            "span_type": "chain",
            "operation_name": operation,
            "status": "error" if error else "ok",
            "kb_id": kb_id(kb),
        }
        tokens = sum(s.get("input_tokens", 0) + s.get("output_tokens", 0) for s in spans)
        attributes: dict[str, Any] = {
            MARKER: self.seed,
            RATE_MARKER: self.traces_per_hour,
            "demo.kb": kb,
        }
        if late:
            attributes["demo.late"] = True
        session = f"sess-{self._ids.getrandbits(40):010x}"
        batch.traces.append(
            {
                "trace_id": trace_id,
                "started_at": at,
                "ended_at": ended,
                "duration_ms": duration,
                "name": f"{operation} request",
                "operation_type": operation,
                "status": "error" if error else "ok",
                "user_id": user,
                "session_id": session,
                "kb_id": kb_id(kb),
                "total_tokens": tokens,
                "cost_usd": sum(costs.values(), Decimal(0)),
                "error_type": error[0] if error else None,
                "error_message": error[1] if error else None,
                "attributes": attributes,
            }
        )
        batch.spans.append(root)
        batch.spans.extend(spans)
        if operation == "chat" and rng.random() < 0.1:
            self._add_messages(batch, trace_id, session, user, kb, model, llm)

    def _add_messages(
        self,
        batch: Batch,
        trace_id: str,
        session: str,
        user: uuid.UUID,
        kb: str,
        model: Model,
        llm: dict[str, Any],
    ) -> None:
        common = {"session_id": session, "trace_id": trace_id, "user_id": user, "kb_id": kb_id(kb)}
        batch.chat_messages.append(
            {
                **common,
                "id": uuid.UUID(int=self._ids.getrandbits(128), version=4),
                "created_at": llm["started_at"] - timedelta(milliseconds=200),
                "role": "user",
                "content": f"How do I find the latest {kb} guidance?",
                "token_count": 12,
            }
        )
        batch.chat_messages.append(
            {
                **common,
                "id": uuid.UUID(int=self._ids.getrandbits(128), version=4),
                "created_at": llm["ended_at"],
                "role": "assistant",
                "content": f"The {kb} knowledge base answers this in its overview section.",
                "model": model.name,
                "token_count": llm["output_tokens"],
                "latency_ms": llm["duration_ms"],
                "sources": [{"kb": kb, "document": f"{kb}/overview.md", "score": 0.82}],
                "citations": [{"source": 0, "span": [4, 42]}],
            }
        )

    def add_document(self, batch: Batch, at: datetime) -> None:
        rng = self.rng
        kb = self._pick(KNOWLEDGE_BASES, _KB_WEIGHTS)
        document = uuid.UUID(int=self._ids.getrandbits(128), version=4)
        size = int(self._lognormal(180_000, 1.0)) + 1024
        chunks = max(1, size // 2400)
        cursor = at
        for step in DOCUMENT_STEPS:
            failed = rng.random() < 0.02
            per_unit = {"parse": size / 4000, "chunk": chunks * 0.8, "embed": chunks * 14}[step]
            duration = max(1, int(self._lognormal(per_unit + 20, 0.4)))
            batch.document_events.append(
                {
                    "id": uuid.UUID(int=self._ids.getrandbits(128), version=4),
                    "created_at": cursor,
                    "document_id": document,
                    "kb_id": kb_id(kb),
                    "event_type": step,
                    "status": "error" if failed else "ok",
                    "duration_ms": duration,
                    "chunks_count": chunks if step != "parse" else None,
                    "token_count": chunks * 480 if step == "embed" else None,
                    "file_size_bytes": size,
                    "error_message": f"{step} failed: malformed input" if failed else None,
                    "attributes": {MARKER: self.seed},
                }
            )
            cursor += timedelta(milliseconds=duration + 5)
            if failed:
                break

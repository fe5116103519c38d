from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import psycopg
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from bench.common import (
    Goal,
    GroupResult,
    Options,
    describe_url,
    fmt_rate,
    fmt_ratio,
    fmt_seconds,
    median,
    progress,
    render_table,
    server_info,
)
from bench.ingest_workload import INSERT_SELECT_SQL, insert_select_params
from bench.otlp_burst import LATENCY_GOAL_S, Burst, burst_lines, make_exports, run_burst
from tests.otlp_encode import make_request, make_span, otlp_json
from worker.embedded.engine import EmbeddedEngine
from worker.schema.install import install

BATCH = 1_000
GOAL = 0.25  # OTLP spans/s as a fraction of in-engine INSERT ... SELECT
JSON_GOAL = 0.5  # OTLP/JSON spans/s as a fraction of OTLP/protobuf
# One exporter, as an SDK's batch span processor sends one export at a time. More concurrent
# clients were measured slower here: the endpoint's Python work shares one interpreter lock.
CLIENTS = 1
MEMORY_PAYLOAD_BYTES = 100 * 1024 * 1024
SPANS_PER_TRACE = 4
# A recent midnight: the endpoint refuses times older than the raw-data retention horizon.
START_NS = (int(time.time()) // 86_400 - 3) * 86_400 * 10**9
ROOT_DIR = Path(__file__).resolve().parent.parent
MODELS = (
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-3-5-sonnet"),
    ("anthropic", "claude-3-haiku"),
    ("google", "gemini-1.5-pro"),
    ("meta", "llama-3-70b"),
)
HEADERS = {"content-type": "application/x-protobuf"}
JSON_HEADERS = {"content-type": "application/json"}


def genai_batch(number: int, size: int = BATCH) -> bytes:
    """An OTLP protobuf request of size GenAI chat spans, four per trace, the first a root."""
    rng = random.Random(number)
    spans = []
    for i in range(size):
        g = number * size + i
        trace = f"{(number << 40) + g // SPANS_PER_TRACE + 1:032x}"
        root = f"{(1 << 60) + g // SPANS_PER_TRACE:016x}"
        provider, model = MODELS[g % len(MODELS)]
        start = START_NS + g * 10_000_000
        duration = rng.randint(100, 2100) * 1_000_000
        is_root = g % SPANS_PER_TRACE == 0
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": model,
            "gen_ai.response.model": model,
            "gen_ai.request.temperature": round(rng.random(), 2),
            "gen_ai.request.max_tokens": 1024,
            "gen_ai.response.id": f"resp_{rng.getrandbits(64):016x}",
            "gen_ai.response.finish_reasons": ["stop"],
            "gen_ai.usage.input_tokens": rng.randint(200, 2200),
            "gen_ai.usage.output_tokens": rng.randint(50, 450),
            "server.address": "api.example.com",
            "server.port": 443,
        }
        if is_root:
            attributes["user.id"] = f"user-{g % 97}"
            attributes["session.id"] = f"session-{g % 1013}"
        spans.append(
            make_span(
                trace,
                root if is_root else f"{(2 << 60) + g:016x}",
                f"chat {model}",
                start,
                start + duration,
                parent_span_id=None if is_root else root,
                attributes=attributes,
            )
        )
    return make_request(spans, resource={"service.name": "bench-rag-api"}).SerializeToString()


# --- the endpoint, as its own process ------------------------------------------------------------


@dataclass
class Endpoint:
    process: subprocess.Popen[bytes]
    url: str
    grpc_target: str

    def peak_rss_bytes(self) -> int | None:
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return None


@contextmanager
def endpoint(database_url: str, max_body_bytes: int | None = None) -> Iterator[Endpoint]:
    port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "worker", "ingest", "--port", str(port)]
    command += ["--grpc-port", str(grpc_port)]
    command += ["--database-url", database_url]
    if max_body_bytes is not None:
        command += ["--max-body-bytes", str(max_body_bytes)]
    env = {k: v for k, v in os.environ.items() if k != "OBSERVABILITY_INGEST_TOKEN"}
    process = subprocess.Popen(command, cwd=ROOT_DIR, env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the ingest process exited with {process.returncode}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the ingest process did not start within 60 s")
            time.sleep(0.1)
        yield Endpoint(process, url, f"127.0.0.1:{grpc_port}")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def send_grpc(target: str, bodies: Iterator[bytes]) -> None:
    """Exports every body over OTLP/gRPC, one at a time, as one exporter does."""
    with grpc.insecure_channel(
        target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        export = channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            response_deserializer=ExportTraceServiceResponse.FromString,
        )
        for body in bodies:
            answer = export(body, timeout=300)
            if answer.HasField("partial_success"):
                raise RuntimeError(f"the endpoint refused spans: {answer.partial_success}")


def json_body(protobuf: bytes) -> bytes:
    """The same request in OTLP/JSON."""
    return json.dumps(otlp_json(ExportTraceServiceRequest.FromString(protobuf))).encode()


def send(
    url: str, bodies: Iterator[bytes], clients: int = CLIENTS, headers: dict[str, str] = HEADERS
) -> int:
    """Posts every body, from several clients at once; returns the bytes sent."""
    lock = threading.Lock()
    sent = 0
    errors: list[str] = []

    def worker() -> None:
        nonlocal sent
        with httpx.Client(timeout=300) as client:
            while not errors:
                with lock:
                    body = next(bodies, None)
                if body is None:
                    return
                response = client.post(f"{url}/v1/traces", content=body, headers=headers)
                # An empty response: no partial success, every span accepted unchanged.
                if response.status_code != 200 or response.content not in (b"", b"{}"):
                    errors.append(f"HTTP {response.status_code}: {response.content[:300]!r}")
                    return
                with lock:
                    sent += len(body)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"the endpoint refused a batch: {errors[0]}")
    return sent


# --- measurements --------------------------------------------------------------------------------


@dataclass
class Rates:
    insert_select_s: list[float] = field(default_factory=list)
    otlp_s: list[float] = field(default_factory=list)
    grpc_s: list[float] = field(default_factory=list)
    json_s: list[float] = field(default_factory=list)
    insert_select_spans_per_s: float | None = None
    otlp_spans_per_s: float | None = None
    grpc_spans_per_s: float | None = None
    json_spans_per_s: float | None = None
    ratio: float | None = None
    grpc_ratio: float | None = None
    json_ratio: float | None = None  # OTLP/JSON vs OTLP/protobuf


def empty(conn: psycopg.Connection[Any]) -> None:
    # trace_extents too: left over, it would make the next run re-deliver known traces
    conn.execute(
        "truncate observability.spans, observability.traces, observability.span_events,"
        " observability.trace_extents"
    )


def count_spans(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select count(*) from observability.spans").fetchone()
    return int(row[0]) if row else 0


def measure_rates(conn: psycopg.Connection[Any], url: str, opts: Options, n: int) -> Rates:
    batches = n // BATCH
    progress(f"otlp: encoding {batches} batches of {BATCH:,} GenAI spans")
    bodies = [genai_batch(b) for b in range(batches)]
    json_bodies = [json_body(body) for body in bodies]
    rates = Rates()
    with endpoint(url) as server:
        send(server.url, iter([genai_batch(10_000)]))  # warm-up: pool, plans, price lookup
        send_grpc(server.grpc_target, iter([genai_batch(10_001)]))
        send(server.url, iter([json_body(genai_batch(10_001))]), headers=JSON_HEADERS)
        conn.execute(INSERT_SELECT_SQL, insert_select_params(BATCH))
        empty(conn)
        for run in range(1, opts.repeat + 1):
            began = time.perf_counter()
            conn.execute(INSERT_SELECT_SQL, insert_select_params(n))
            rates.insert_select_s.append(time.perf_counter() - began)
            empty(conn)
            began = time.perf_counter()
            send(server.url, iter(bodies))
            rates.otlp_s.append(time.perf_counter() - began)
            stored = count_spans(conn)
            if stored != n:
                raise RuntimeError(f"OTLP run stored {stored:,} spans, expected {n:,}")
            empty(conn)
            began = time.perf_counter()
            send_grpc(server.grpc_target, iter(bodies))
            rates.grpc_s.append(time.perf_counter() - began)
            stored = count_spans(conn)
            if stored != n:
                raise RuntimeError(f"OTLP/gRPC run stored {stored:,} spans, expected {n:,}")
            empty(conn)
            began = time.perf_counter()
            send(server.url, iter(json_bodies), headers=JSON_HEADERS)
            rates.json_s.append(time.perf_counter() - began)
            stored = count_spans(conn)
            if stored != n:
                raise RuntimeError(f"OTLP/JSON run stored {stored:,} spans, expected {n:,}")
            empty(conn)
            progress(
                f"  run {run}/{opts.repeat}: INSERT ... SELECT {rates.insert_select_s[-1]:.2f}s, "
                f"OTLP/HTTP {rates.otlp_s[-1]:.2f}s, OTLP/gRPC {rates.grpc_s[-1]:.2f}s, "
                f"OTLP/JSON {rates.json_s[-1]:.2f}s"
            )
    base, otlp = median(rates.insert_select_s), median(rates.otlp_s)
    over_grpc = median(rates.grpc_s)
    rates.insert_select_spans_per_s = n / base if base else None
    rates.otlp_spans_per_s = n / otlp if otlp else None
    rates.grpc_spans_per_s = n / over_grpc if over_grpc else None
    as_json = median(rates.json_s)
    rates.json_spans_per_s = n / as_json if as_json else None
    if rates.insert_select_spans_per_s and rates.otlp_spans_per_s:
        rates.ratio = rates.otlp_spans_per_s / rates.insert_select_spans_per_s
    if rates.insert_select_spans_per_s and rates.grpc_spans_per_s:
        rates.grpc_ratio = rates.grpc_spans_per_s / rates.insert_select_spans_per_s
    if rates.otlp_spans_per_s and rates.json_spans_per_s:
        rates.json_ratio = rates.json_spans_per_s / rates.otlp_spans_per_s
    return rates


@dataclass
class Memory:
    payload_bytes: int = 0
    spans: int = 0
    seconds: float = 0.0
    idle_peak_rss_bytes: int | None = None
    peak_rss_bytes: int | None = None


def measure_memory(conn: psycopg.Connection[Any], url: str) -> Memory:
    memory = Memory()
    batch_bytes = len(genai_batch(0))
    batches = -(-MEMORY_PAYLOAD_BYTES // batch_bytes)
    progress(f"otlp: peak memory while receiving {batches} batches ({MEMORY_PAYLOAD_BYTES:,} B)")
    with endpoint(url) as server:
        memory.idle_peak_rss_bytes = server.peak_rss_bytes()
        began = time.perf_counter()
        # Batch numbers whose spans start in the past (each batch is 10 s after the one before).
        bodies = (genai_batch(20_000 + b) for b in range(batches))
        memory.payload_bytes = send(server.url, bodies)
        memory.seconds = time.perf_counter() - began
        memory.peak_rss_bytes = server.peak_rss_bytes()
    memory.spans = count_spans(conn)
    empty(conn)
    return memory


def measure_burst(conn: psycopg.Connection[Any], url: str) -> Burst:
    plan = make_exports(START_NS + 86_400 * 10**9)  # a day after the other runs' spans
    progress(f"otlp: a burst of {len(plan)} SDK exporters at once")
    with endpoint(url) as server:
        burst = run_burst(server.url, plan)
    burst.spans_stored = count_spans(conn)
    empty(conn)
    return burst


# --- the group -----------------------------------------------------------------------------------


@contextmanager
def database(opts: Options) -> Iterator[str]:
    if opts.database_url is not None:
        yield opts.database_url
        return
    with EmbeddedEngine() as engine:
        yield engine.url


def set_jobs(conn: psycopg.Connection[Any], scheduled: bool) -> None:
    conn.execute(
        "select public.alter_job(j.job_id, scheduled => %s) from timescaledb_information.jobs as j"
        " where j.hypertable_schema = 'observability'",
        [scheduled],
    )


def run(opts: Options) -> GroupResult:
    started = time.perf_counter()
    n = max(BATCH, opts.rows // BATCH * BATCH)
    with database(opts) as url, psycopg.connect(url, autocommit=True, connect_timeout=30) as conn:
        install(conn)
        if count_spans(conn):
            raise SystemExit("otlp benchmark: observability.spans is not empty")
        server = server_info(conn)
        set_jobs(conn, scheduled=False)  # no policy refresh in the middle of a timing
        try:
            rates = measure_rates(conn, url, opts, n)
            burst = measure_burst(conn, url)
            memory = measure_memory(conn, url)
        finally:
            set_jobs(conn, scheduled=True)
    target = "a fresh in-memory embedded engine" if opts.database_url is None else "DATABASE_URL"
    payload = {
        "options": {"spans": n, "batch": BATCH, "clients": CLIENTS, "repeat": opts.repeat},
        "target": {**describe_url(url), **server, "kind": target},
        "duration_s": round(time.perf_counter() - started, 3),
        "rates": asdict(rates),
        "memory": asdict(memory),
        "burst": {**asdict(burst), "refused": burst.refused, "ok": burst.ok()},
        "goal": GOAL,
        "json_goal": JSON_GOAL,
    }
    goals = (
        Goal(
            "OTLP spans/s vs in-engine INSERT ... SELECT",
            rates.ratio,
            ">=",
            GOAL,
            "",
            f"{fmt_rate(rates.otlp_spans_per_s)} vs {fmt_rate(rates.insert_select_spans_per_s)} "
            "spans/s",
        ),
        Goal(
            "OTLP/JSON spans/s vs OTLP/protobuf",
            rates.json_ratio,
            ">=",
            JSON_GOAL,
            "",
            f"{fmt_rate(rates.json_spans_per_s)} vs {fmt_rate(rates.otlp_spans_per_s)} spans/s",
        ),
        Goal(
            f"OTLP accepted-request p99 s, {burst.exporters} exporters at once (every span "
            "delivered, every 503 with Retry-After)",
            # a latency that lost spans or refused without Retry-After meets nothing
            burst.accepted_p99_s if burst.delivered() else float("inf"),
            "<=",
            LATENCY_GOAL_S,
            "",
            f"{burst.spans_stored:,} of {burst.spans:,} spans stored, {burst.refused} refused, "
            f"{burst.exports_failed} exports given up",
        ),
    )
    return GroupResult(payload, report(rates, memory, burst, n, opts, target), ok=True, goals=goals)


def json_ok(rates: Rates) -> bool:
    return rates.json_ratio is not None and rates.json_ratio >= JSON_GOAL


def report(rates: Rates, memory: Memory, burst: Burst, n: int, opts: Options, target: str) -> str:
    rows = [
        [
            "in-engine INSERT ... SELECT into spans",
            fmt_seconds(median(rates.insert_select_s)),
            fmt_rate(rates.insert_select_spans_per_s),
            "1.00",
        ],
        [
            f"OTLP/HTTP protobuf, {BATCH:,} spans per request, {CLIENTS} client(s)",
            fmt_seconds(median(rates.otlp_s)),
            fmt_rate(rates.otlp_spans_per_s),
            fmt_ratio(rates.ratio),
        ],
        [
            f"OTLP/gRPC protobuf, {BATCH:,} spans per request, 1 client",
            fmt_seconds(median(rates.grpc_s)),
            fmt_rate(rates.grpc_spans_per_s),
            fmt_ratio(rates.grpc_ratio),
        ],
        [
            f"OTLP/HTTP JSON, the same requests, {CLIENTS} client(s)",
            fmt_seconds(median(rates.json_s)),
            fmt_rate(rates.json_spans_per_s),
            fmt_ratio(
                rates.json_spans_per_s / rates.insert_select_spans_per_s
                if rates.json_spans_per_s and rates.insert_select_spans_per_s
                else None
            ),
        ],
    ]
    table = render_table(
        f"OTLP ingest: {n:,} GenAI spans on {target}, median of {opts.repeat}",
        ["path", "seconds", "spans/s", "ratio"],
        rows,
        "lrrr",
    )
    verdict = "met" if rates.ratio is not None and rates.ratio >= GOAL else "NOT met"
    mib = 1024 * 1024
    peak = memory.peak_rss_bytes
    idle = memory.idle_peak_rss_bytes
    lines = [
        "",
        f"goal: OTLP >= {GOAL:.2f} x in-engine INSERT ... SELECT: {verdict} "
        f"({fmt_ratio(rates.ratio)})",
        f"goal: OTLP/JSON spans/s >= {JSON_GOAL:.2f} x OTLP/protobuf: "
        f"{'met' if json_ok(rates) else 'NOT met'} ({fmt_ratio(rates.json_ratio)})",
        *burst_lines(burst),
        "The OTLP path covers HTTP, protobuf decoding, mapping, the bulk writer (validation, "
        "pricing, upsert), trace rows for root spans and the trace totals update.",
        f"ingest process peak RSS (VmHWM) while receiving {memory.payload_bytes / mib:,.0f} MiB "
        f"({memory.spans:,} spans, {memory.seconds:.1f}s): "
        + (f"{peak / mib:,.0f} MiB" if peak else "-")
        + (f" (after start-up: {idle / mib:,.0f} MiB)" if idle else ""),
    ]
    return table + "\n" + "\n".join(lines)

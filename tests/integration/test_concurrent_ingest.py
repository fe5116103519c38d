from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import psycopg
import pytest

from tests.otlp_encode import make_request, make_span

# Several ingest replicas behind a load balancer: the spans and roots of one trace reach
# different processes at the same moment. On a real server each process writes in its own
# transaction, concurrently; the embedded engine runs one statement at a time, so there the
# test checks the same figures without the race.
CHILDREN = 8
PROTOBUF = {"content-type": "application/x-protobuf"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def two_ingest_processes(clean_observability: str) -> Iterator[list[str]]:
    urls = []
    with ExitStack() as stack:
        for _ in range(2):
            port = _free_port()
            process = subprocess.Popen(
                [sys.executable, "-m", "worker", "ingest", "--port", str(port),
                 "--database-url", clean_observability, "--pool-size", "4",
                 "--max-concurrent-requests", "8", "--max-requests-in-flight", "32",
                 "--grpc-port", str(_free_port())],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
            stack.callback(process.wait, 10)
            stack.callback(process.terminate)
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        for url in urls:
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "an ingest process did not start"
                time.sleep(0.2)
        yield urls


def test_totals_and_roots_stay_right_with_two_ingest_processes(
    two_ingest_processes: list[str], clean_observability: str, database_backend: str
) -> None:
    traces = 150 if database_backend == "env" else 24
    rng = random.Random(12)
    start = (int(time.time()) // 3600 - 2) * 3600 * 10**9
    expected: dict[str, tuple[int, int, int]] = {}  # trace -> (tokens, first start, last end)
    requests = []
    for t in range(traces):
        trace_id = f"{t + 1:032x}"
        first, second = start + t * 10**6, start + t * 10**6 + 5 * 10**9
        roots = [
            make_span(trace_id, f"{1:016x}", "turn", first, first + 10**9),
            make_span(trace_id, f"{2:016x}", "turn again", second, second + 3 * 10**9),
        ]
        requests += [make_request([span]) for span in roots]
        tokens = 0
        for c in range(CHILDREN):
            used = (rng.randint(1, 500), rng.randint(1, 500))
            tokens += sum(used)
            attributes = {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.usage.input_tokens": used[0],
                "gen_ai.usage.output_tokens": used[1],
            }
            child = make_span(
                trace_id, f"{c + 16:016x}", "chat", first + 10**6, first + 2 * 10**6,
                parent_span_id=f"{1:016x}", attributes=attributes,
            )  # fmt: skip
            requests.append(make_request([child]))
        expected[trace_id] = (tokens, first, second + 3 * 10**9)
    # Neighbours in this list belong to one trace: sent at once, alternately to each process.
    bodies = [(two_ingest_processes[i % 2], r.SerializeToString()) for i, r in enumerate(requests)]

    def send(item: tuple[str, bytes]) -> int:
        url, body = item
        for _ in range(20):
            response = httpx.post(f"{url}/v1/traces", content=body, headers=PROTOBUF, timeout=60)
            if response.status_code != 503:
                return response.status_code
            time.sleep(0.5)
        return response.status_code

    with ThreadPoolExecutor(max_workers=2 * (CHILDREN + 2)) as pool:
        statuses = list(pool.map(send, bodies))
    assert set(statuses) == {200}

    with psycopg.connect(clean_observability, autocommit=True) as conn:
        rows = conn.execute(
            "select trace_id, total_tokens, started_at, ended_at from observability.traces"
        ).fetchall()
        spans = conn.execute("select count(*) from observability.spans").fetchone()
    assert spans == (traces * (CHILDREN + 2),)
    assert len(rows) == traces, "one row per trace id"
    wrong = []
    for trace_id, tokens, started, ended in rows:
        want_tokens, first, last = expected[trace_id]
        got = (tokens, _nanos(started), _nanos(ended))
        if got != (want_tokens, first // 1000 * 1000, last // 1000 * 1000):
            wrong.append((trace_id, got, expected[trace_id]))
    assert wrong == []


def _nanos(value: object) -> int:
    assert hasattr(value, "timestamp")
    return round(value.timestamp() * 1_000_000) * 1000  # type: ignore[attr-defined]

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tests.aggregation_support import day_start
from tests.celery_support import CeleryWorker, free_port, start_worker
from tests.otlp_encode import make_request, make_span
from worker.scheduling.app import app as celery_app
from worker.scheduling.tasks import BACKFILL_TASK

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "scale-out-token"
HOURS = 12
TRACES = 240
SPANS_PER_TRACE = 3
BATCH_TRACES = 8
# Short backoff, so that tasks waiting for the other worker's lease retry soon.
WORKER_ENV = {"OBSERVABILITY_RETRY_BACKOFF_MAX": "2", "OBSERVABILITY_TASK_MAX_RETRIES": "30"}

backfill_task = celery_app.tasks[BACKFILL_TASK]


def _start_ingest(url: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            # two replicas on one host: gRPC off (this test exports over HTTP; one port each)
            [
                sys.executable,
                "-m",
                "worker",
                "ingest",
                "--port",
                str(port),
                "--grpc-port",
                "off",
                "--database-url",
                url,
            ],
            cwd=ROOT,
            env={**os.environ, "OBSERVABILITY_INGEST_TOKEN": TOKEN},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"ingest did not start:\n{log.read_text()}"
        time.sleep(0.1)


@pytest.fixture
def two_ingests(clean_observability: str, tmp_path: Path) -> Iterator[list[str]]:
    started = [_start_ingest(clean_observability, tmp_path / f"ingest-{i}.log") for i in (1, 2)]
    try:
        yield [base for _, base in started]
    finally:
        for process, _ in started:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


@pytest.fixture
def two_workers(
    celery_broker: str, clean_observability: str, tmp_path: Path
) -> Iterator[list[CeleryWorker]]:
    workers: list[CeleryWorker] = []
    try:
        for i in (1, 2):
            (tmp_path / f"worker-{i}").mkdir()
            workers.append(
                start_worker(tmp_path / f"worker-{i}", clean_observability, extra_env=WORKER_ENV)
            )
        yield workers
    finally:
        for worker in workers:
            worker.stop()


def _traffic(start: datetime) -> list[list[Any]]:
    """TRACES traces of SPANS_PER_TRACE spans over HOURS hours, in export batches."""
    rng = random.Random(7)
    spans = []
    for n in range(TRACES):
        trace_id = f"{rng.getrandbits(128):032x}"
        at = start + timedelta(seconds=rng.randrange(HOURS * 3600 - 120))
        t0 = int(at.timestamp() * 1e9)
        root = f"{rng.getrandbits(64):016x}"
        error = "model failed" if n % 10 == 0 else None
        trace = [make_span(trace_id, root, "turn", t0, t0 + 90 * 10**9, error=error)]
        for child in range(SPANS_PER_TRACE - 1):
            trace.append(
                make_span(
                    trace_id,
                    f"{rng.getrandbits(64):016x}",
                    f"step-{child}",
                    t0 + 10**9,
                    t0 + 2 * 10**9,
                    parent_span_id=root,
                )
            )
        spans.append(trace)
    return [spans[i : i + BATCH_TRACES] for i in range(0, TRACES, BATCH_TRACES)]


def _post(base: str, batch: list[list[Any]]) -> dict[str, Any]:
    body = make_request([span for trace in batch for span in trace]).SerializeToString()
    response = httpx.post(
        f"{base}/v1/traces",
        content=body,
        headers={"content-type": "application/x-protobuf", "authorization": f"Bearer {TOKEN}"},
        timeout=120,
    )
    answer = ExportTraceServiceResponse()
    if response.status_code == 200:
        answer.ParseFromString(response.content)
    return {"status": response.status_code, "rejected": answer.partial_success.rejected_spans}


def _sent(batches: list[list[list[Any]]]) -> tuple[set[tuple[str, str]], Counter[datetime]]:
    spans, per_hour = set(), Counter()
    for batch in batches:
        for trace in batch:
            for span in trace:
                spans.add((span.trace_id.hex(), span.span_id.hex()))
            started = datetime.fromtimestamp(trace[0].start_time_unix_nano / 1e9, UTC)
            per_hour[started.replace(minute=0, second=0, microsecond=0)] += 1
    return spans, per_hour


def test_two_ingests_and_two_workers_lose_and_duplicate_nothing(
    two_ingests: list[str], two_workers: list[CeleryWorker], clean_observability: str
) -> None:
    start = day_start(3)
    batches = _traffic(start)
    # Every batch to one ingest, alternating; every fifth also to the other one, as an
    # exporter retrying against another replica after a timeout would.
    sends = [(two_ingests[i % 2], batch) for i, batch in enumerate(batches)]
    sends += [(two_ingests[(i + 1) % 2], b) for i, b in enumerate(batches) if i % 5 == 0]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda send: _post(*send), sends))
    assert all(a == {"status": 200, "rejected": 0} for a in answers), answers

    spans, per_hour = _sent(batches)
    with psycopg.connect(clean_observability, autocommit=True) as conn:
        stored = conn.execute("select trace_id, span_id from observability.spans").fetchall()
        traces = conn.execute(
            "select count(*), count(distinct trace_id) from observability.traces"
        ).fetchone()
    assert len(stored) == len(set(stored)) == len(spans) == TRACES * SPANS_PER_TRACE
    assert set(stored) == spans
    assert traces == (TRACES, TRACES)

    # Aggregation through both workers: hour backfills in two-hour chunks, two of them sent
    # twice, and the day; the workers share one lease per granularity in the database.
    end = start + timedelta(hours=HOURS)
    chunks = [(start + timedelta(hours=h), start + timedelta(hours=h + 2)) for h in range(0, 12, 2)]
    tasks = [(a.isoformat(), b.isoformat(), "hour") for a, b in chunks + chunks[:2]]
    tasks.append((start.isoformat(), (start + timedelta(days=1)).isoformat(), "day"))
    results = [backfill_task.apply_async(args=args) for args in tasks]
    for result in results:
        result.get(timeout=240)
    done = [len(re.findall(r"Task \S+ succeeded", worker.log())) for worker in two_workers]
    assert sum(done) == len(tasks)
    assert all(count > 0 for count in done), f"tasks per worker: {done}"

    with psycopg.connect(clean_observability, autocommit=True) as conn:
        hourly = dict(
            conn.execute(
                "select bucket_time, count from observability.metrics_aggregates"
                " where granularity = 'hour' and metric_type = 'trace.errors'"
                " and dimension_type = 'overall' and bucket_time >= %s and bucket_time < %s",
                [start, end],
            ).fetchall()
        )
        daily = conn.execute(
            "select count, sum_value from observability.metrics_aggregates"
            " where granularity = 'day' and metric_type = 'trace.errors'"
            " and dimension_type = 'overall' and bucket_time = %s",
            [start],
        ).fetchall()
        keys = conn.execute(
            "select count(*), count(distinct (granularity, bucket_time, metric_type,"
            " dimension_type, dimension_value)) from observability.metrics_aggregates"
        ).fetchone()
    assert hourly == dict(per_hour)
    assert daily == [(TRACES, TRACES // 10)]  # every tenth trace failed
    assert keys is not None and keys[0] == keys[1]

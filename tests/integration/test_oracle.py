from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tests.oracle import observed
from tests.oracle.compare import is_row
from tests.oracle.run import CaseResult, run_case
from tests.oracle.send import endpoint

# An independent oracle for every number the store publishes (tests/oracle/): seeded LLM/RAG
# traffic goes in through the OTLP endpoint (official exporter and OTLP/JSON) and the bulk
# writer; the figures expected from what was sent are compared with the rows, the rollup views,
# metrics_aggregates after the worker's sync, and days in a local time zone.
# `make test` runs one fixed seed; `make fuzz` runs random seeds for FUZZ_SECONDS.

SEED = 20261202
TRACES = 250
DOCUMENTS = 120


@pytest.fixture(scope="module")
def otlp_endpoint(migrated_database_url: str) -> Iterator[str]:
    with endpoint(migrated_database_url) as url:
        yield url


@pytest.fixture
def no_rollups_left(clean_observability: str) -> Iterator[str]:
    """The migrated database; afterwards neither raw nor rolled-up rows of the oracle's traffic
    are left (continuous aggregates keep materialized rows after their raw rows are deleted)."""
    yield clean_observability
    observed.reset(clean_observability, datetime.now(UTC))


def test_oracle_fixed_seed(otlp_endpoint: str, no_rollups_left: str) -> None:
    clean_observability = no_rollups_left
    result = run_case(clean_observability, otlp_endpoint, SEED, TRACES, DOCUMENTS)
    print(result.report())
    if not result.ok:
        pytest.fail(result.report(), pytrace=False)


def case_seeds(first: int) -> Iterator[int]:
    """The first case replays FUZZ_SEED itself; the others follow from it."""
    seed = first
    while True:
        yield seed
        seed = random.Random(seed).getrandbits(32)


def case_size(seed: int) -> tuple[int, int]:
    rng = random.Random(seed ^ 0x5EED)
    return rng.randrange(80, 700), rng.randrange(20, 400)


@pytest.mark.skipif(not os.environ.get("ORACLE_FUZZ"), reason="run by make fuzz")
@pytest.mark.timeout(0)
def test_oracle_fuzz(otlp_endpoint: str, no_rollups_left: str) -> None:
    clean_observability = no_rollups_left
    budget = float(os.environ.get("FUZZ_SECONDS") or 1800)
    first = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().getrandbits(32))
    print(f"\nFUZZ_SEED={first} FUZZ_SECONDS={budget:g}", flush=True)
    deadline = time.monotonic() + budget
    failures: dict[frozenset[tuple[str, str]], CaseResult] = {}
    cases = 0
    for seed in case_seeds(first):
        traces, documents = case_size(seed)
        started = time.monotonic()
        result = run_case(clean_observability, otlp_endpoint, seed, traces, documents)
        cases += 1
        took = time.monotonic() - started
        verdict = "ok" if result.ok else f"{len(result.diffs)} differences"
        print(
            f"case {cases}: seed {seed}, {traces} traces, {documents} documents, "
            f"{took:.0f}s: {verdict}",
            flush=True,
        )
        if not result.ok:
            kind = failure_kind(result)
            if kind not in failures:
                failures[kind] = result
                print(result.report(), flush=True)
        if time.monotonic() + took > deadline:
            break
    print(f"{cases} cases, {len(failures)} kinds of failure", flush=True)
    if failures:
        lines = [f"{len(failures)} kinds of failure in {cases} cases (reports above):"]
        for kind, r in failures.items():
            shown = ", ".join(sorted(".".join(k) for k in kind)[:8])
            lines.append(f"  make fuzz FUZZ_SEED={r.seed}  ({len(r.diffs)} differences: {shown})")
        pytest.fail("\n".join(lines), pytrace=False)


def failure_kind(result: CaseResult) -> frozenset[tuple[str, str]]:
    """What differs, to report each kind of failure once (with its first seed): the generator's
    shapes of the traces whose rows differ, and the metrics and fields of view differences that
    no differing row accounts for."""
    return frozenset(
        (d.view, d.shape if is_row(d) else f"{d.key.split()[2]}.{d.field}")
        for d in result.diffs
        if not d.explained
    )

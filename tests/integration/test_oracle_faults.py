from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.fault_proxy import fault_proxy
from tests.integration.test_oracle import no_rollups_left, otlp_endpoint  # noqa: F401
from tests.oracle import run as oracle_run
from tests.oracle.rollup import GRANULARITIES, WIDTHS, bucket
from tests.oracle.run import run_case
from worker.rollups import backfill_metrics
from worker.settings import WorkerSettings

pytestmark = pytest.mark.faults

SEED = 20261203


def test_oracle_after_the_database_is_lost_mid_sync(
    otlp_endpoint: str,  # noqa: F811
    no_rollups_left: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The oracle's case, with every sync cut off after its first batch and then resumed: what
    metrics_aggregates holds must still be exactly what was sent."""
    database_url = no_rollups_left
    monkeypatch.setenv("OBSERVABILITY_BATCH_BUCKETS", "24")
    monkeypatch.setenv("OBSERVABILITY_LEASE_TTL", "3")
    faults: list[str] = []

    def sync_with_a_lost_database(url: str, traffic: Any) -> Any:
        now = datetime.now(UTC)
        end = min(traffic.end, now)
        windows = {}
        with fault_proxy(url) as proxy:
            for granularity in GRANULARITIES:

                def cut_after_first(batch: Any, counts: Any, seen: list[Any] = []) -> None:  # noqa: B006
                    seen.append(batch)
                    if len(seen) == 1:
                        proxy.cut()

                try:
                    backfill_metrics(
                        traffic.start,
                        end,
                        granularity,
                        database_url=proxy.url,
                        settings=WorkerSettings.from_env(),
                        now=now,
                        progress=cut_after_first,
                    )
                except Exception as exc:  # noqa: BLE001 - the fault itself
                    faults.append(f"{granularity}: {type(exc).__name__}")
                proxy.heal()
                backfill_metrics(
                    traffic.start,
                    end,
                    granularity,
                    database_url=proxy.url,
                    settings=WorkerSettings.from_env(),
                    now=now,
                    resume=True,
                    wait_seconds=30,
                )
                last = bucket(end, granularity)
                windows[granularity] = (
                    bucket(traffic.start, granularity),
                    last if last == end else last + WIDTHS[granularity],
                )
        return windows

    monkeypatch.setattr(oracle_run, "sync", sync_with_a_lost_database)
    result = run_case(database_url, otlp_endpoint, SEED, traces=120, documents=60)
    print(result.report())
    assert faults, "no sync was cut off"
    if not result.ok:
        pytest.fail(result.report(), pytrace=False)

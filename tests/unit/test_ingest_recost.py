from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from worker.cli.main import COMMANDS, build_parser, main

BERLIN_WINTER = timezone(timedelta(hours=1))


def test_recost_is_registered_and_times_without_offset_are_utc() -> None:
    assert "recost" in COMMANDS
    args = build_parser().parse_args(
        ["recost", "--from", "2026-11-01", "--to", "2026-11-02T06:00:00+02:00", "--dry-run"]
    )
    assert args.start == datetime(2026, 11, 1, tzinfo=UTC)
    assert args.end == datetime(2026, 11, 2, 4, tzinfo=UTC)
    assert (args.model, args.dry_run) == (None, True)


def test_a_bad_date_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["recost", "--from", "last tuesday", "--to", "2026-11-02"])
    assert exited.value.code == 2
    assert "not an ISO 8601 date or time: 'last tuesday'" in capsys.readouterr().err


def test_the_end_must_come_after_the_start(caplog: pytest.LogCaptureFixture) -> None:
    args = ["recost", "--from", "2026-11-02", "--to", "2026-11-01", "--database-url", "x"]
    assert main(args) == 2
    assert "--to (2026-11-01 00:00:00+00:00) must be after --from" in caplog.text


def test_recost_without_a_database_fails_cleanly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["recost", "--from", "2026-11-01", "--to", "2026-11-02"]) == 2
    assert "DATABASE_URL" in caplog.text


def test_recost_reports_an_unreachable_database(caplog: pytest.LogCaptureFixture) -> None:
    url = "postgresql://nobody@127.0.0.1:1/none"
    assert (
        main(["recost", "--from", "2026-11-01", "--to", "2026-11-02", "--database-url", url]) == 1
    )
    assert "cannot reach the database" in caplog.text

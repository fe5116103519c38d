from __future__ import annotations

import pytest

from worker.cli.ingest import DEFAULT_GRPC_IN_FLIGHT, DEFAULT_GRPC_PORT
from worker.otlp import grpc_server
from worker.otlp.grpc_server import GrpcSettings, address


def test_address_brackets_ipv6() -> None:
    assert address("127.0.0.1", 4317) == "127.0.0.1:4317"
    assert address("localhost", 4317) == "localhost:4317"
    assert address("::", 4317) == "[::]:4317"
    assert address("[::1]", 4317) == "[::1]:4317"


@pytest.mark.parametrize("kwargs", [{"max_requests_in_flight": 0}, {"busy_retry_after_s": 0}])
def test_settings_refuse_limits_below_one(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="at least 1|1 or more"):
        GrpcSettings(**kwargs)


def test_the_command_defaults_match_the_receiver() -> None:
    # The command keeps its own copy so that parsing arguments does not load gRPC.
    assert DEFAULT_GRPC_PORT == grpc_server.DEFAULT_GRPC_PORT == GrpcSettings().port
    assert GrpcSettings().max_requests_in_flight == DEFAULT_GRPC_IN_FLIGHT

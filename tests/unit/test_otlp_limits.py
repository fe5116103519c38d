from __future__ import annotations

from worker.ingest import DEFAULT_LIMITS
from worker.otlp.attributes import MAX_STRING_CHARS
from worker.otlp.encode import make_request, make_span
from worker.otlp.mapping import map_request

TRACE = "0af7651916cd43dd8448eb211c80319c"
ROOT = "b7ad6b7169203331"
CHILD = "00f067aa0ba902b7"
START = 1_767_225_600_000_000_000


def test_each_warning_states_the_limit_that_was_applied() -> None:
    name_limit = DEFAULT_LIMITS.max_text_chars
    span = make_span(
        TRACE,
        ROOT,
        "n" * (name_limit + 1),
        START,
        START + 1,
        attributes={
            "prompt": "p" * (MAX_STRING_CHARS + 1),
            "other": "o" * (MAX_STRING_CHARS + 1),
            "gen_ai.operation.name": "o" * (name_limit + 1),
            "gen_ai.request.model": "m" * (DEFAULT_LIMITS.max_indexed_text_bytes + 1),
        },
    )
    warnings = map_request(make_request([span])).warnings
    assert sorted(warnings) == sorted(
        [
            f"2 string values cut to {name_limit} characters",
            f"2 string values cut to {MAX_STRING_CHARS} characters",
            "1 model, provider or session ids cut to fit their indexed columns"
            f" ({DEFAULT_LIMITS.max_indexed_text_bytes} bytes)",
        ]
    )


def test_the_attributes_size_warning_states_its_limit() -> None:
    big = {f"prompt.{i}": "p" * MAX_STRING_CHARS for i in range(6)}
    span = make_span(TRACE, CHILD, "chat", START, START + 1, parent_span_id=ROOT, attributes=big)
    [warning] = map_request(make_request([span])).warnings
    assert warning.endswith(f"({DEFAULT_LIMITS.max_json_bytes} bytes)")

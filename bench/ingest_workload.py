from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

# Recent midnight: the writers refuse times older than the raw-data retention horizon.
EPOCH = (datetime.now(UTC) - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)

# (provider, model, server address, median latency ms): a mix of hosted chat models.
MODELS = (
    ("openai", "gpt-4o", "api.openai.com", 1100),
    ("openai", "gpt-4o-mini", "api.openai.com", 550),
    ("anthropic", "claude-3-5-sonnet", "api.anthropic.com", 1300),
    ("anthropic", "claude-3-haiku", "api.anthropic.com", 450),
    ("google", "gemini-1.5-pro", "generativelanguage.googleapis.com", 1200),
    ("meta", "llama-3-70b", "inference.example.internal", 900),
)
SPANS_PER_TRACE = 4


def make_genai_spans(n: int, *, seed: int = 1, start: datetime = EPOCH) -> list[dict[str, Any]]:
    """n GenAI chat spans as write_batch takes them: OpenTelemetry attributes, no cost (it is
    computed at ingest), four per trace, one every 10 ms from start."""
    rng = random.Random(seed)
    spans = []
    for i in range(n):
        provider, model, address, latency = MODELS[rng.randrange(len(MODELS))]
        trace = seed * 1_000_000_007 + i // SPANS_PER_TRACE + 1
        started_at = start + timedelta(milliseconds=10 * i)
        duration = max(1, int(rng.lognormvariate(0, 0.5) * latency))
        input_tokens = int(rng.lognormvariate(6.8, 0.9))
        output_tokens = int(rng.lognormvariate(5.0, 0.7))
        failed = rng.random() < 0.01
        streamed = rng.random() < 0.8
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": model,
            "gen_ai.response.model": model,
            "gen_ai.request.temperature": round(rng.random(), 2),
            "gen_ai.request.max_tokens": 1024,
            "gen_ai.response.id": f"resp_{rng.getrandbits(64):016x}",
            "gen_ai.response.finish_reasons": ["error" if failed else "stop"],
            "gen_ai.usage.input_tokens": input_tokens,
            "gen_ai.usage.output_tokens": output_tokens,
            "server.address": address,
            "server.port": 443,
        }
        spans.append(
            {
                "trace_id": f"{trace:032x}",
                "span_id": f"{seed:04x}{i + 1:012x}",
                "parent_span_id": f"{seed:04x}{0xFFFF_0000_0000 + i // SPANS_PER_TRACE:012x}",
                "started_at": started_at,
                "ended_at": started_at + timedelta(milliseconds=duration),
                "duration_ms": duration,
                "name": f"chat {model}",
                "span_type": "llm",
                "operation_name": "chat",
                "status": "error" if failed else "ok",
                "provider": provider,
                "model": model,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "time_to_first_token_ms": int(duration * 0.2) if streamed else None,
                "error_type": "rate_limit_exceeded" if failed else None,
                "attributes": attributes,
            }
        )
    return spans


# The same kind of rows generated inside the server, for the in-engine INSERT ... SELECT limit:
# the columns and attribute keys of make_genai_spans, with a cost computed inline (no lookup).
# %% is a literal % for psycopg.
INSERT_SELECT_SQL = """
insert into observability.spans
  (trace_id, span_id, parent_span_id, started_at, ended_at, duration_ms, name, span_type,
   operation_name, status, provider, model, input_tokens, output_tokens, time_to_first_token_ms,
   cost_usd, error_type, attributes)
select pg_catalog.lpad(pg_catalog.to_hex(%(trace_base)s + g / 4), 32, '0'),
  pg_catalog.lpad(pg_catalog.to_hex(%(span_base)s + g), 16, '0'),
  pg_catalog.lpad(pg_catalog.to_hex(%(parent_base)s + g / 4), 16, '0'),
  t, t + dur * interval '1 millisecond', dur, 'chat ' || m.model, 'llm', 'chat',
  case when u_err < 0.01 then 'error' else 'ok' end, m.provider, m.model, tin, tout,
  case when u_stream < 0.8 then (dur * 0.2)::integer end,
  pg_catalog.round((tin * 2.5 + tout * 10.0) / 1000000.0, 6),
  case when u_err < 0.01 then 'rate_limit_exceeded' end,
  pg_catalog.jsonb_build_object(
    'gen_ai.operation.name', 'chat', 'gen_ai.provider.name', m.provider,
    'gen_ai.request.model', m.model, 'gen_ai.response.model', m.model,
    'gen_ai.request.temperature', pg_catalog.round(u_temp::numeric, 2),
    'gen_ai.request.max_tokens', 1024,
    'gen_ai.response.id', 'resp_' || pg_catalog.lpad(pg_catalog.to_hex(g * 7919), 16, '0'),
    'gen_ai.response.finish_reasons', pg_catalog.jsonb_build_array(
      case when u_err < 0.01 then 'error' else 'stop' end),
    'gen_ai.usage.input_tokens', tin, 'gen_ai.usage.output_tokens', tout,
    'server.address', m.address, 'server.port', 443)
from (
  select g, u_err, u_stream, u_temp, 1 + (g %% 6) as model_no,
    %(start)s::timestamptz + g * interval '10 milliseconds' as t,
    (100 + 2000 * u_dur)::integer as dur,
    (200 + 2000 * u_in)::integer as tin, (50 + 400 * u_out)::integer as tout
  from (
    select g, random() as u_err, random() as u_stream, random() as u_temp, random() as u_dur,
      random() as u_in, random() as u_out
    from pg_catalog.generate_series(1::bigint, %(n)s::bigint) as g
  ) as r
) as s
join (values
  (1, 'openai', 'gpt-4o', 'api.openai.com'),
  (2, 'openai', 'gpt-4o-mini', 'api.openai.com'),
  (3, 'anthropic', 'claude-3-5-sonnet', 'api.anthropic.com'),
  (4, 'anthropic', 'claude-3-haiku', 'api.anthropic.com'),
  (5, 'google', 'gemini-1.5-pro', 'generativelanguage.googleapis.com'),
  (6, 'meta', 'llama-3-70b', 'inference.example.internal')
) as m (model_no, provider, model, address) on m.model_no = s.model_no
"""


def insert_select_params(n: int, *, seed: int = 2, start: datetime = EPOCH) -> dict[str, Any]:
    """Parameters of INSERT_SELECT_SQL for n rows whose ids differ from make_genai_spans'."""
    return {
        "n": n,
        "start": start,
        "trace_base": (seed << 56) + 1,
        "span_base": (seed << 48) + 1,
        "parent_base": (seed << 48) + (1 << 47),
    }

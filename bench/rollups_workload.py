from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from worker.schema.sqlfiles import discover, split_statements
from worker.schema.sqltemplate import render

FULL_TRACES = 500_000
SPANS_PER_TRACE = 4
HISTORY = timedelta(days=30)
# Offsets spread over the period by a multiplier coprime to its length in seconds: every
# second of the 30 days gets at most one trace (of the first 2,592,000), in no visible order.
SPREAD = 227_761

# Skew: 3 operations (60/30/10 %), 200 users and 20 knowledge bases where low numbers are far
# busier (u^2), 3 % anonymous traces, half the generation traces without a knowledge base;
# 6 models (35/25/15/10/10/5 %) of 4 providers with lognormal latencies of their own, 80 % of
# calls streamed (time to first token), 1-2 % errors. %% is a literal % for psycopg.
TRACES_SQL = """
insert into observability.traces
  (trace_id, started_at, ended_at, duration_ms, name, operation_type, status, user_id, kb_id,
   total_tokens, cost_usd)
select pg_catalog.lpad(pg_catalog.to_hex(g), 32, '0'), started_at,
  started_at + dur * interval '1 millisecond', dur, op, op,
  case when u_err < 0.02 then 'error' else 'ok' end,
  case when u_anon < 0.03 then null else ('00000000-0000-4000-8000-' || pg_catalog.lpad(
    pg_catalog.to_hex(pg_catalog.floor(200 * u_user * u_user)::integer), 12, '0'))::uuid end,
  case when op = 'generation' and u_nokb < 0.5 then null else ('00000000-0000-4000-9000-'
    || pg_catalog.lpad(pg_catalog.to_hex(pg_catalog.floor(20 * u_kb * u_kb)::integer), 12, '0')
    )::uuid end,
  tokens, pg_catalog.round(tokens * 0.000004, 6)
from (
  select g, op, u_err, u_anon, u_user, u_nokb, u_kb,
    %(start)s::timestamptz + ((g * %(spread)s) %% %(seconds)s) * interval '1 second'
      as started_at,
    pg_catalog.exp(case op when 'chat' then 7.3 when 'search' then 6.2 else 8.0 end
      + 0.6 * pg_catalog.sqrt(-2 * pg_catalog.ln(1 - a1))
        * pg_catalog.cos(2 * pg_catalog.pi() * a2))::integer as dur,
    pg_catalog.exp(6.5 + 0.8 * pg_catalog.sqrt(-2 * pg_catalog.ln(1 - b1))
      * pg_catalog.cos(2 * pg_catalog.pi() * b2))::integer as tokens
  from (
    select g, case when r < 0.6 then 'chat' when r < 0.9 then 'search' else 'generation' end
      as op, a1, a2, b1, b2, u_err, u_anon, u_user, u_nokb, u_kb
    from (
      select g, random() as r, random() as a1, random() as a2, random() as b1,
        random() as b2, random() as u_err, random() as u_anon, random() as u_user,
        random() as u_nokb, random() as u_kb
      from pg_catalog.generate_series(%(first)s::bigint, %(last)s::bigint) as g
    ) as a
  ) as b
) as c
"""

SPANS_SQL = """
insert into observability.spans
  (trace_id, span_id, started_at, ended_at, duration_ms, name, span_type, operation_name,
   status, provider, model, input_tokens, output_tokens, time_to_first_token_ms, cost_usd)
select pg_catalog.lpad(pg_catalog.to_hex(g), 32, '0'), pg_catalog.lpad(pg_catalog.to_hex(k), 16,
  '0'), started_at, started_at + dur * interval '1 millisecond', dur, 'chat ' || model, 'llm',
  'chat', case when u_err < 0.01 then 'error' else 'ok' end, provider, model, tin, tout,
  case when u_stream < 0.8 then (dur * (0.1 + 0.3 * u_ttft))::integer end,
  pg_catalog.round(tin * 0.0000025 + tout * 0.00001, 6)
from (
  select g, k, model, provider, u_err, u_stream, u_ttft,
    %(start)s::timestamptz + ((g * %(spread)s) %% %(seconds)s) * interval '1 second'
      + k * interval '50 milliseconds' as started_at,
    pg_catalog.exp(mu + sigma * pg_catalog.sqrt(-2 * pg_catalog.ln(1 - a1))
      * pg_catalog.cos(2 * pg_catalog.pi() * a2))::integer as dur,
    pg_catalog.exp(6.8 + 0.9 * pg_catalog.sqrt(-2 * pg_catalog.ln(1 - b1))
      * pg_catalog.cos(2 * pg_catalog.pi() * b2))::integer as tin,
    pg_catalog.exp(5.0 + 0.7 * pg_catalog.sqrt(-2 * pg_catalog.ln(1 - c1))
      * pg_catalog.cos(2 * pg_catalog.pi() * c2))::integer as tout
  from (
    select (h - 1) / %(per_trace)s + %(first)s as g, (h - 1) %% %(per_trace)s + 1 as k,
      case when u < 0.35 then 'gpt-4o' when u < 0.60 then 'gpt-4o-mini'
        when u < 0.75 then 'claude-3-5-sonnet' when u < 0.85 then 'claude-3-haiku'
        when u < 0.95 then 'gemini-1.5-pro' else 'llama-3-70b' end as model,
      case when u < 0.60 then 'openai' when u < 0.85 then 'anthropic'
        when u < 0.95 then 'google' else 'meta' end as provider,
      case when u < 0.35 then 7.0 when u < 0.60 then 6.3 when u < 0.75 then 7.2
        when u < 0.85 then 6.0 when u < 0.95 then 7.1 else 6.8 end as mu,
      case when u < 0.60 then 0.5 when u < 0.85 then 0.6 else 0.8 end as sigma,
      a1, a2, b1, b2, c1, c2, u_err, u_stream, u_ttft
    from (
      select h, random() as u, random() as a1, random() as a2, random() as b1, random() as b2,
        random() as c1, random() as c2, random() as u_err, random() as u_stream,
        random() as u_ttft
      from pg_catalog.generate_series(1::bigint, %(spans)s::bigint) as h
    ) as a
  ) as b
) as c
"""


@dataclass(frozen=True)
class Slice:
    """Traces first..last (ids), spread over [start, start + length)."""

    first: int
    last: int
    start: datetime
    length: timedelta

    @property
    def traces(self) -> int:
        return self.last - self.first + 1


def generate(conn: psycopg.Connection[Any], part: Slice) -> None:
    params = {
        "first": part.first,
        "last": part.last,
        "start": part.start,
        "seconds": int(part.length.total_seconds()),
        "spread": SPREAD,
        "per_trace": SPANS_PER_TRACE,
        "spans": part.traces * SPANS_PER_TRACE,
    }
    conn.execute("select pg_catalog.setseed(%s)", [(part.first % 1000) / 1000])
    conn.execute(TRACES_SQL, params)
    conn.execute(SPANS_SQL, params)


_DEFINITION = re.compile(
    r"create materialized view (?P<name>[\w.]+)\s+with \((?P<options>[^)]*)\) as\s+"
    r"(?P<query>select.*?)\s+with no data;?\s*$",
    re.S,
)


def rollup_definitions(sketch_schema: str) -> dict[str, tuple[str, str]]:
    """name -> (with-options, select query) of every rollup, as sql/ defines it."""
    found = {}
    for sql_file in discover().incremental:
        for statement in split_statements(render(sql_file.text, sketch_schema)):
            body = re.sub(r"--[^\n]*", "", statement).strip()
            match = _DEFINITION.match(body)
            if match:
                found[match["name"]] = (match["options"], match["query"])
    return found


def without_sketches(query: str) -> str:
    """The same aggregate without its percentile columns (the sketch lines dropped)."""
    lines = [line for line in query.splitlines() if "_sketch" not in line]
    return re.sub(r",(\s*\nfrom )", r"\1", "\n".join(lines))

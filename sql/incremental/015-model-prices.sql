-- Model prices in USD per million tokens, with the time each price takes effect. A span without
-- a cost of its own gets one computed at ingest from the price in effect at its start
-- (observability.llm_cost_usd, sql/idempotent/006-model-prices.sql). A price change is a new row
-- with a later effective_from, never an update, so older spans keep the price of their time;
-- `python -m worker recost` recomputes costs over a window after prices were corrected.
create table observability.model_prices
( model text not null
, provider text not null
, effective_from timestamptz not null
, input_usd_per_million numeric(12, 6) not null
, output_usd_per_million numeric(12, 6) not null
-- model leads: a span names its model always and its provider not always.
, constraint model_prices_pkey primary key (model, provider, effective_from)
, constraint model_prices_model_not_empty check (model <> '')
, constraint model_prices_provider_not_empty check (provider <> '')
, constraint model_prices_input_price_non_negative check (input_usd_per_million >= 0)
, constraint model_prices_output_price_non_negative check (output_usd_per_million >= 0)
);

-- List prices as of 2025-06 (standard tier, prompts up to 128k tokens, no batch or cache
-- discounts), applied from 2024-01-01. Edit to yours: insert rows with your own
-- effective_from, then run python -m worker recost over the affected window.
insert into observability.model_prices
  (model, provider, effective_from, input_usd_per_million, output_usd_per_million)
values
  ('gpt-4o', 'openai', '2024-01-01 00:00:00+00', 2.50, 10.00),
  ('gpt-4o-mini', 'openai', '2024-01-01 00:00:00+00', 0.15, 0.60),
  ('gpt-4.1', 'openai', '2024-01-01 00:00:00+00', 2.00, 8.00),
  ('gpt-4.1-mini', 'openai', '2024-01-01 00:00:00+00', 0.40, 1.60),
  ('text-embedding-3-small', 'openai', '2024-01-01 00:00:00+00', 0.02, 0.00),
  ('text-embedding-3-large', 'openai', '2024-01-01 00:00:00+00', 0.13, 0.00),
  ('claude-3-5-sonnet', 'anthropic', '2024-01-01 00:00:00+00', 3.00, 15.00),
  ('claude-3-5-haiku', 'anthropic', '2024-01-01 00:00:00+00', 0.80, 4.00),
  ('claude-3-haiku', 'anthropic', '2024-01-01 00:00:00+00', 0.25, 1.25),
  ('gemini-1.5-pro', 'google', '2024-01-01 00:00:00+00', 1.25, 5.00),
  ('gemini-1.5-flash', 'google', '2024-01-01 00:00:00+00', 0.075, 0.30);

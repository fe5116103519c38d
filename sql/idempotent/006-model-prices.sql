-- Cost of an LLM call from the price table (sql/incremental/015-model-prices.sql), recreated on
-- every install. These functions define the pricing rule: python -m worker recost applies them
-- after a price change. The bulk writer (worker/ingest/pricing.py) applies the same rule to a
-- batch in Python, from one read of the table, and its tests compare the two.

comment on table observability.model_prices is
  'Model prices in USD per million tokens from effective_from on. A price change is a new row; '
  'spans without a cost of their own are priced at ingest with the row in effect at their start.';
comment on index observability.model_prices_pkey is
  'The price lookup: model, then provider, then the latest effective_from at or before a time.';
comment on column observability.model_prices.model is
  'Model name exactly as spans carry it (gen_ai.request.model).';
comment on column observability.model_prices.provider is
  'Provider, lowercase, as observability.canonical_provider names it (openai, anthropic, '
  'google, aws.bedrock, ...); a span''s gen_ai.provider.name is mapped to it. A span without '
  'a provider takes any provider''s price for its model.';
comment on column observability.model_prices.effective_from is
  'The price applies to spans that started at or after this time, until the next row.';
comment on column observability.model_prices.input_usd_per_million is
  'USD per million input (prompt) tokens (gen_ai.usage.input_tokens).';
comment on column observability.model_prices.output_usd_per_million is
  'USD per million output (completion) tokens (gen_ai.usage.output_tokens).';

-- The provider of model_prices rows that a span's provider name stands for: ASCII letters
-- lowercased (translate(), not lower(), so that the result does not depend on the locale), then
-- common aliases mapped (Azure OpenAI -> openai, Gemini and Vertex AI -> google, ...). This is
-- the only table of aliases: the bulk writer asks this function too.
create or replace function observability.canonical_provider(provider text) returns text
language sql immutable parallel safe
as $$
  select case pg_catalog.translate($1, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')
    when 'azure.ai.openai' then 'openai'
    when 'az.ai.openai' then 'openai'
    when 'azure_openai' then 'openai'
    when 'azure-openai' then 'openai'
    when 'gcp.gemini' then 'google'
    when 'gcp.vertex_ai' then 'google'
    when 'gcp.gen_ai' then 'google'
    when 'vertex_ai' then 'google'
    when 'vertexai' then 'google'
    when 'gemini' then 'google'
    when 'google_genai' then 'google'
    when 'bedrock' then 'aws.bedrock'
    when 'amazon_bedrock' then 'aws.bedrock'
    when 'mistral' then 'mistral_ai'
    when 'mistralai' then 'mistral_ai'
    else pg_catalog.translate($1, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')
  end
$$;

-- The price row in effect for model at time at: a given provider must match (as
-- canonical_provider names it; model_prices holds those names), a NULL provider
-- takes the latest price of any provider (ties: the first provider by name). Plain SQL without
-- SET options, so the planner inlines it into recost's query; two branches, so that the usual
-- case (provider given) is one backward index scan without a sort.
create or replace function observability.model_price_at
( model text
, provider text
, at timestamptz
) returns table (input_usd_per_million numeric, output_usd_per_million numeric)
language sql stable parallel safe rows 1
as $$
  select q.input_usd_per_million, q.output_usd_per_million
  from (
    (
      select p.input_usd_per_million, p.output_usd_per_million
      from observability.model_prices as p
      where $2 is not null and p.model = $1
        and p.provider = observability.canonical_provider($2) and p.effective_from <= $3
      order by p.effective_from desc
      limit 1
    )
    union all
    (
      select p.input_usd_per_million, p.output_usd_per_million
      from observability.model_prices as p
      where $2 is null and p.model = $1 and p.effective_from <= $3
      order by p.effective_from desc, p.provider
      limit 1
    )
  ) as q
$$;

-- Tokens times prices, rounded to micro-dollars. NULL when both token counts are NULL (one
-- missing counts as 0), when a price is NULL, or when the cost would not fit numeric(10, 6).
create or replace function observability.token_cost_usd
( input_tokens bigint
, output_tokens bigint
, input_usd_per_million numeric
, output_usd_per_million numeric
) returns numeric
language sql immutable parallel safe
as $$
  select case when ($1 is not null or $2 is not null)
    and pg_catalog.round((coalesce($1, 0) * $3 + coalesce($2, 0) * $4) / 1000000, 6) < 10000
    then pg_catalog.round((coalesce($1, 0) * $3 + coalesce($2, 0) * $4) / 1000000, 6)
  end
$$;

create or replace function observability.llm_cost_usd
( model text
, input_tokens bigint
, output_tokens bigint
, at timestamptz
, provider text default null
) returns numeric
language sql stable parallel safe
as $$
  select observability.token_cost_usd($2, $3, p.input_usd_per_million, p.output_usd_per_million)
  from observability.model_price_at($1, $5, $4) as p
$$;

comment on function observability.canonical_provider(text) is
  'The model_prices provider a span''s provider name stands for: lowercased, aliases mapped '
  '(azure.ai.openai -> openai, gcp.gemini / gcp.vertex_ai -> google, ...).';
comment on function observability.model_price_at(text, text, timestamptz) is
  'The model_prices row in effect for model (and provider, unless NULL) at time at.';
comment on function observability.token_cost_usd(bigint, bigint, numeric, numeric) is
  'USD cost of token counts at prices per million tokens, rounded to micro-dollars; NULL '
  'without token counts or prices, or above 9999.999999.';
comment on function observability.llm_cost_usd(text, bigint, bigint, timestamptz, text) is
  'USD cost of a call to model at time at with the price then in effect (model_prices); NULL '
  'without a price, without token counts, or above 9999.999999.';

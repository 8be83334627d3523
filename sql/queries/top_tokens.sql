-- Top and bottom action tokens by advantage, with the tokens around them as context
-- params: run_id=null, iteration=null, limit=10, context=8
-- run_id null: the run written last; iteration null: all iterations; limit per side; context tokens each side.
-- A token without text (stored without a tokenizer) shows as <token_id>.
-- Each side is a top-N over the ranking columns (a constant limit, so no full sort); `picked` (2 x limit
-- rows) is materialized once, and the context join reads only the picked rollouts' rows.
-- CTE materialization is explicit: DuckDB's estimate for a materialized CTE is far off, which led it to
-- build hash tables on the 10 M-row side; small CTEs used twice are materialized, the rest inlined.
with params as not materialized (
    select
        coalesce(cast($run_id as varchar), (select run_id from rollouts order by written_at desc, iteration desc limit 1)) as run_id,
        cast($iteration as bigint) as iteration,
        cast(coalesce($context, 8) as integer) as context
),

top as not materialized (
    select 'top' as side, tokens.iteration, tokens.rollout_id, tokens.position, tokens.advantage,
           tokens.value, tokens.reward, tokens.returns
    from tokens
    join params on tokens.run_id = params.run_id
    where (params.iteration is null or tokens.iteration = params.iteration) and tokens.is_action
    order by tokens.advantage desc, tokens.iteration, tokens.rollout_id, tokens.position
    limit coalesce($limit, 10)
),

bottom as not materialized (
    select 'bottom' as side, tokens.iteration, tokens.rollout_id, tokens.position, tokens.advantage,
           tokens.value, tokens.reward, tokens.returns
    from tokens
    join params on tokens.run_id = params.run_id
    where (params.iteration is null or tokens.iteration = params.iteration) and tokens.is_action
    order by tokens.advantage asc, tokens.iteration, tokens.rollout_id, tokens.position
    limit coalesce($limit, 10)
),

picked as materialized (
    select
        *,
        row_number() over (
            partition by side
            order by case when side = 'top' then -advantage else advantage end, iteration, rollout_id, position
        ) as rank
    from (select * from top union all select * from bottom)
),

context as not materialized (
    select
        tokens.iteration,
        tokens.rollout_id,
        tokens.position,
        coalesce(tokens.token, '<' || tokens.token_id || '>') as text
    from tokens
    join params on tokens.run_id = params.run_id
    where tokens.iteration in (select iteration from picked)
      and tokens.rollout_id in (select rollout_id from picked)
)

select
    picked.side,
    picked.rank,
    picked.iteration,
    picked.rollout_id,
    picked.position,
    any_value(ctx.text) filter (where ctx.position = picked.position) as token,
    picked.advantage,
    picked.value,
    picked.reward,
    picked.returns,
    coalesce(string_agg(ctx.text, '' order by ctx.position) filter (where ctx.position < picked.position), '')
        as before,
    coalesce(string_agg(ctx.text, '' order by ctx.position) filter (where ctx.position > picked.position), '')
        as after
from picked
join context as ctx
    on ctx.iteration = picked.iteration
   and ctx.rollout_id = picked.rollout_id
   and ctx.position between picked.position - (select context from params)
                        and picked.position + (select context from params)
group by picked.side, picked.rank, picked.iteration, picked.rollout_id, picked.position,
         picked.advantage, picked.value, picked.reward, picked.returns
order by picked.side desc, picked.rank

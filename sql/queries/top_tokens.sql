-- Top and bottom action tokens by advantage, with the tokens around them as context
-- params: run_id=null, iteration=null, limit=10, context=8
-- run_id null: the run written last; iteration null: all iterations; limit per side; context tokens each side.
-- A token without text (stored without a tokenizer) shows as <token_id>.
with params as (
    select
        coalesce(cast($run_id as varchar), (select run_id from rollouts order by written_at desc, iteration desc limit 1)) as run_id,
        cast($iteration as bigint) as iteration,
        cast(coalesce($limit, 10) as bigint) as n,
        cast(coalesce($context, 8) as integer) as context
),

scoped as (
    select tokens.*, coalesce(tokens.token, '<' || tokens.token_id || '>') as text
    from tokens, params
    where tokens.run_id = params.run_id
      and (params.iteration is null or tokens.iteration = params.iteration)
),

top as (
    select 'top' as side, iteration, rollout_id, position, text, advantage, value, reward, returns
    from scoped
    where is_action
    order by advantage desc, iteration, rollout_id, position
    limit (select n from params)
),

bottom as (
    select 'bottom' as side, iteration, rollout_id, position, text, advantage, value, reward, returns
    from scoped
    where is_action
    order by advantage asc, iteration, rollout_id, position
    limit (select n from params)
),

picked as (
    select
        *,
        row_number() over (partition by side order by case when side = 'top' then -advantage else advantage end,
            iteration, rollout_id, position) as rank
    from (select * from top union all select * from bottom)
)

select
    picked.side,
    picked.rank,
    picked.iteration,
    picked.rollout_id,
    picked.position,
    picked.text as token,
    picked.advantage,
    picked.value,
    picked.reward,
    picked.returns,
    coalesce(string_agg(ctx.text, '' order by ctx.position) filter (where ctx.position < picked.position), '')
        as before,
    coalesce(string_agg(ctx.text, '' order by ctx.position) filter (where ctx.position > picked.position), '')
        as after
from picked
join scoped as ctx
    on ctx.iteration = picked.iteration
   and ctx.rollout_id = picked.rollout_id
   and ctx.position between picked.position - (select context from params)
                        and picked.position + (select context from params)
group by all
order by picked.side desc, picked.rank

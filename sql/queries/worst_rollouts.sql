-- Lowest-scoring rollouts of an iteration with their per-token advantages
-- params: run_id=null, iteration=null, limit=5
-- run_id null: the run written last; iteration null: the run's last iteration.
-- Tokens are joined through the one (run, iteration) partition first, so only its file is read.
-- CTE materialization is explicit: DuckDB's estimate for a materialized CTE is far off, which led it to
-- build hash tables on the 10 M-row side; small CTEs used twice are materialized, the rest inlined.
with params as not materialized (
    select
        coalesce(cast($run_id as varchar), (select run_id from rollouts order by written_at desc, iteration desc limit 1)) as run_id,
        cast($iteration as bigint) as iteration
),

scope as not materialized (
    select
        params.run_id,
        coalesce(params.iteration, (select max(iteration) from rollouts where run_id = params.run_id)) as iteration
    from params
),

worst as materialized (
    select rollouts.*
    from rollouts
    join scope on rollouts.run_id = scope.run_id and rollouts.iteration = scope.iteration
    order by rollouts.score asc, rollouts.rollout_id
    limit coalesce($limit, 5)
),

worst_tokens as not materialized (
    select
        tokens.rollout_id,
        list(
            {'position': tokens.position, 'token': coalesce(tokens.token, '<' || tokens.token_id || '>'),
             'advantage': tokens.advantage, 'value': tokens.value, 'reward': tokens.reward}
            order by tokens.position
        ) as token_advantages
    from tokens
    join scope on tokens.run_id = scope.run_id and tokens.iteration = scope.iteration
    where tokens.is_action and tokens.rollout_id in (select rollout_id from worst)
    group by tokens.rollout_id
)

select
    worst.iteration,
    worst.rollout_id,
    worst.prompt_id,
    worst.score,
    worst.response_length,
    worst.finish_reason,
    worst.prompt,
    worst.response,
    worst_tokens.token_advantages
from worst
left join worst_tokens on worst_tokens.rollout_id = worst.rollout_id
order by worst.score, worst.rollout_id

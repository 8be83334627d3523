-- Lowest-scoring rollouts of an iteration with their per-token advantages
-- params: run_id=null, iteration=null, limit=5
-- run_id null: the run written last; iteration null: the run's last iteration.
with params as (
    select
        coalesce(cast($run_id as varchar), (select run_id from rollouts order by written_at desc, iteration desc limit 1)) as run_id,
        cast($iteration as bigint) as iteration,
        cast(coalesce($limit, 5) as bigint) as n
),

scope as (
    select
        params.run_id,
        coalesce(params.iteration, (select max(iteration) from rollouts where run_id = params.run_id)) as iteration,
        params.n
    from params
),

worst as (
    select rollouts.*
    from rollouts, scope
    where rollouts.run_id = scope.run_id and rollouts.iteration = scope.iteration
    order by rollouts.score asc, rollouts.rollout_id
    limit (select n from scope)
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
    list(
        {'position': tokens.position, 'token': coalesce(tokens.token, '<' || tokens.token_id || '>'),
         'advantage': tokens.advantage, 'value': tokens.value, 'reward': tokens.reward}
        order by tokens.position
    ) filter (where tokens.is_action) as token_advantages
from worst
join tokens
    on tokens.run_id = worst.run_id
   and tokens.iteration = worst.iteration
   and tokens.rollout_id = worst.rollout_id
group by all
order by worst.score, worst.rollout_id

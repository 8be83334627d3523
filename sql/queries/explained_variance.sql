-- The critic's explained variance 1 - Var(returns - value) / Var(returns) per iteration
-- params: run_id=null
-- run_id null: the run written last.
-- Population variances over action tokens, as cleanrl's ppo.py logs it; NULL when Var(returns) = 0.
with params as not materialized (
    select coalesce(cast($run_id as varchar), (select run_id from rollouts order by written_at desc, iteration desc limit 1)) as run_id
)

select
    tokens.iteration,
    count(*) as n_action_tokens,
    1 - var_pop(tokens.returns - tokens.value) / nullif(var_pop(tokens.returns), 0) as explained_variance,
    var_pop(tokens.returns) as var_returns,
    avg(tokens.value) as mean_value,
    avg(tokens.returns) as mean_returns
from tokens, params
where tokens.run_id = params.run_id and tokens.is_action
group by tokens.iteration
order by tokens.iteration

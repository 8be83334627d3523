-- The critic's explained variance 1 - Var(returns - value) / Var(returns) per iteration
-- params: run_id=null
-- run_id null: the run written last. Population variances over action tokens, as cleanrl's ppo.py logs
-- it; NULL when Var(returns) is 0 (to rounding). Variances come from double-precision sums (one pass, about twice as
-- fast as var_pop here); the cancellation error is ~ (mean^2 / var) * 1e-16, negligible for returns.
with params as not materialized (
    select coalesce(cast($run_id as varchar), (select run_id from rollouts order by written_at desc, iteration desc limit 1)) as run_id
),

sums as not materialized (
    select
        tokens.iteration,
        count(*) as n,
        sum(cast(tokens.returns as double)) as s_ret,
        sum(cast(tokens.returns as double) * tokens.returns) as ss_ret,
        sum(cast(tokens.returns - tokens.value as double)) as s_err,
        sum(cast(tokens.returns - tokens.value as double) * (tokens.returns - tokens.value)) as ss_err,
        sum(cast(tokens.value as double)) as s_value
    from tokens
    join params on tokens.run_id = params.run_id
    where tokens.is_action
    group by tokens.iteration
),

moments as not materialized (
    select
        iteration,
        n,
        ss_ret / n - (s_ret / n) * (s_ret / n) as var_returns,
        ss_err / n - (s_err / n) * (s_err / n) as var_error,
        s_value / n as mean_value,
        s_ret / n as mean_returns
    from sums
)

select
    iteration,
    n as n_action_tokens,
    -- Constant returns: the difference of sums leaves rounding noise, not 0, so a relative threshold.
    case when var_returns > 1e-12 * greatest(1, mean_returns * mean_returns)
         then 1 - var_error / var_returns end as explained_variance,
    var_returns,
    mean_value,
    mean_returns
from moments
order by iteration

-- Explained variance of the critic over every action token of one iteration: 1 - Var(R - V) / Var(R)
-- The difference is taken in double precision: the columns are FLOAT, and R - V in FLOAT loses digits.
select
    count(*) as n,
    case
        when var_pop(returns) > 0
            then 1 - var_pop(cast(returns as double) - cast(value as double)) / var_pop(returns)
    end as explained_variance
from tokens
where run_id = $run_id and iteration = $iteration and is_action

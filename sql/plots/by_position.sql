-- Advantage and KL of action tokens by response position in one iteration: mean, spread and quantiles
-- The FLOAT columns are widened first: DuckDB interpolates quantiles of a FLOAT in single precision.
with t as (
    select position, cast(advantage as double) as advantage, cast(kl as double) as kl
    from tokens
    where run_id = $run_id and iteration = $iteration and is_action
)

select
    position,
    count(*) as n,
    avg(advantage) as adv_mean,
    coalesce(stddev_pop(advantage), 0) as adv_std,
    quantile_cont(advantage, 0.1) as adv_p10,
    quantile_cont(advantage, 0.9) as adv_p90,
    avg(kl) as kl_mean,
    quantile_cont(kl, 0.1) as kl_p10,
    quantile_cont(kl, 0.9) as kl_p90
from t
group by position
order by position

-- Rollouts of one iteration ranked three ways: best score first, worst score first, and a seeded sample order
-- Rows are kept when they fall in any of the three windows; the caller assembles the lists.
with ranked as (
    select
        rollout_id,
        score,
        row_number() over (order by score desc nulls last, rollout_id) as best_rank,
        row_number() over (order by score asc nulls first, rollout_id) as worst_rank,
        -- md5 rather than hash(): stable across DuckDB versions, so a seed means the same sample
        row_number() over (order by md5(rollout_id || ':' || $seed), rollout_id) as sample_rank
    from rollouts
    where run_id = $run_id and iteration = $iteration
)

select rollout_id, score, best_rank, worst_rank, sample_rank
from ranked
where best_rank <= $best or worst_rank <= $worst or sample_rank <= $sample + $best + $worst
order by best_rank

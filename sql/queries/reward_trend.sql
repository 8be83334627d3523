-- Sequence score, length, EOS rate and KL of each iteration of a run
-- params: run_id=null
-- run_id null: the run written last.
with params as not materialized (
    select coalesce(cast($run_id as varchar), (select run_id from rollouts order by written_at desc, iteration desc limit 1)) as run_id
)

select
    rollouts.iteration,
    count(*) as n_rollouts,
    avg(rollouts.score) as mean_score,
    stddev_samp(rollouts.score) as std_score,
    min(rollouts.score) as min_score,
    max(rollouts.score) as max_score,
    avg(rollouts.response_length) as mean_length,
    avg(case when rollouts.finish_reason = 'eos' then 1.0 else 0.0 end) as eos_rate,
    avg(rollouts.kl_sum) as mean_kl_sum,
    avg(rollouts.shaped_reward_sum) as mean_shaped_reward
from rollouts, params
where rollouts.run_id = params.run_id
group by rollouts.iteration
order by rollouts.iteration

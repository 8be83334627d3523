-- One iteration in numbers: rollouts, tokens, mean score, response length, KL and advantage
with r as (
    select
        count(*) as rollouts,
        avg(score) as mean_score,
        min(score) as min_score,
        max(score) as max_score,
        avg(response_length) as mean_length,
        avg(case when finish_reason = 'eos' then 1.0 else 0.0 end) as eos_rate
    from rollouts
    where run_id = $run_id and iteration = $iteration
),

t as (
    select
        count(*) as action_tokens,
        avg(advantage) as mean_advantage,
        stddev_samp(advantage) as std_advantage,
        avg(kl) as mean_kl,
        avg(value) as mean_value,
        avg(returns) as mean_return
    from tokens
    where run_id = $run_id and iteration = $iteration and is_action
)

select * from r, t

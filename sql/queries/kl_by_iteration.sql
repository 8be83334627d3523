-- KL to the reference policy per iteration: per action token and per sequence
-- params: run_id=null
-- run_id null: the run written last. Per-sequence figures come from rollouts.kl_sum (no distinct count over tokens).
with params as not materialized (
    select coalesce(cast($run_id as varchar), (select run_id from rollouts order by written_at desc, iteration desc limit 1)) as run_id
),

per_token as not materialized (
    select
        tokens.iteration,
        count(*) as n_action_tokens,
        avg(tokens.kl) as mean_kl_per_token,
        max(tokens.kl) as max_kl,
        avg(tokens.logprob - tokens.ref_logprob) as mean_log_ratio
    from tokens
    join params on tokens.run_id = params.run_id
    where tokens.is_action
    group by tokens.iteration
),

per_sequence as not materialized (
    select
        rollouts.iteration,
        count(*) as n_rollouts,
        avg(rollouts.kl_sum) as mean_kl_per_sequence,
        max(rollouts.kl_sum) as max_kl_per_sequence
    from rollouts
    join params on rollouts.run_id = params.run_id
    group by rollouts.iteration
)

select
    per_token.iteration,
    per_token.n_action_tokens,
    per_sequence.n_rollouts,
    per_token.mean_kl_per_token,
    per_sequence.mean_kl_per_sequence,
    per_token.max_kl,
    per_sequence.max_kl_per_sequence,
    per_token.mean_log_ratio
from per_token
left join per_sequence using (iteration)
order by per_token.iteration

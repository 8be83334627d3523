-- KL to the reference policy per iteration: per action token and per sequence
-- params: run_id=null
-- run_id null: the run written last.
with params as (
    select coalesce(cast($run_id as varchar), (select run_id from rollouts order by written_at desc, iteration desc limit 1)) as run_id
)

select
    tokens.iteration,
    count(*) as n_action_tokens,
    count(distinct tokens.rollout_id) as n_rollouts,
    avg(tokens.kl) as mean_kl_per_token,
    sum(tokens.kl) / count(distinct tokens.rollout_id) as mean_kl_per_sequence,
    max(tokens.kl) as max_kl,
    avg(tokens.logprob - tokens.ref_logprob) as mean_log_ratio
from tokens, params
where tokens.run_id = params.run_id and tokens.is_action
group by tokens.iteration
order by tokens.iteration

-- Every stored number of every token of the given rollouts in one iteration, in response order
select
    rollout_id,
    position,
    token_id,
    token,
    is_action,
    logprob,
    ref_logprob,
    logprob - ref_logprob as log_ratio,
    value,
    kl,
    reward,
    advantage,
    returns,
    train_logprob
from tokens
where run_id = $run_id and iteration = $iteration and list_contains($ids, rollout_id)
order by rollout_id, position

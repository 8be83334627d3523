-- Critic value against its target (the return) for a seeded sample of an iteration's action tokens
select value, returns
from tokens
where run_id = $run_id and iteration = $iteration and is_action
order by md5(rollout_id || ':' || position), rollout_id, position
limit $limit

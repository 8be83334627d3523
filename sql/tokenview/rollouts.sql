-- The rollouts rows of the given ids in one iteration (every column, reward_<name> included)
select *
from rollouts
where run_id = $run_id and iteration = $iteration and list_contains($ids, rollout_id)

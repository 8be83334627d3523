-- Per-rollout score and reward components of one iteration (texts left out)
select * exclude (prompt, response, reference)
from rollouts
where run_id = $run_id and iteration = $iteration
order by rollout_id

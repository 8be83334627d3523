-- Stored runs, the one written last first, with their iterations
select run_id, list(distinct iteration order by iteration) as iterations, max(written_at) as written_at
from rollouts
group by run_id
order by max(written_at) desc, run_id

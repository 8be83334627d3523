-- Advantage statistics of action tokens by response-position bucket (one run, one or all iterations)
-- params: run_id=null, iteration=null, bucket_size=32
-- run_id null: the run written last; iteration null: all iterations of the run.
with params as not materialized (
    select
        coalesce(cast($run_id as varchar), (select run_id from rollouts order by written_at desc, iteration desc limit 1)) as run_id,
        cast($iteration as bigint) as iteration,
        cast(coalesce($bucket_size, 32) as integer) as bucket_size
),

action_tokens as not materialized (
    select
        tokens.position // params.bucket_size * params.bucket_size as bucket_start,
        params.bucket_size,
        tokens.advantage
    from tokens, params
    where tokens.run_id = params.run_id
      and (params.iteration is null or tokens.iteration = params.iteration)
      and tokens.is_action
)

select
    bucket_start,
    bucket_start + any_value(bucket_size) - 1 as bucket_end,
    count(*) as n_tokens,
    avg(advantage) as mean_advantage,
    stddev_samp(advantage) as std_advantage,
    min(advantage) as min_advantage,
    max(advantage) as max_advantage,
    avg(abs(advantage)) as mean_abs_advantage
from action_tokens
group by bucket_start
order by bucket_start

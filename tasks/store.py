"""Prefect tasks: write an iteration to the per-token store, fill training log-probs, clean up.

All take paths and ids. Writes are atomic and idempotent per (run_id, iteration), so
retrying them is safe.
"""

from __future__ import annotations

from prefect import task

from tasks.retry import unless_disk_full


@task(name="store-iteration", retries=2, retry_delay_seconds=1, retry_condition_fn=unless_disk_full)
def store_iteration(
    data_dir: str,
    run_id: str,
    iteration: int,
    batch_dir: str,
    scores_path: str,
    advantages_path: str,
    tokenizer_path: str | None = None,
) -> dict:
    """Write tokens and rollouts Parquet of one iteration; returns paths and row counts."""
    from gae.batch import RolloutBatch
    from gae.rewards import ScoreTable
    from gae.store import write_iteration
    from tasks.advantages import load_advantages

    tok = None
    if tokenizer_path is not None:
        from gae.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer_path)
    out = load_advantages(advantages_path)
    return write_iteration(
        data_dir,
        run_id=run_id,
        iteration=iteration,
        batch=RolloutBatch.load(batch_dir),
        token_rewards=out["token_rewards"],
        kl=out["kl"],
        advantages=out["advantages"],
        returns=out["returns"],
        scores=ScoreTable.load(scores_path),
        tokenizer=tok,
    )


@task(name="fill-train-logprobs", retries=2, retry_delay_seconds=1, retry_condition_fn=unless_disk_full)
def fill_train_logprobs(
    data_dir: str, run_id: str, iteration: int, batch_dir: str, train_logprobs_path: str
) -> dict:
    """Set tokens.train_logprob from a safetensors file holding `train_logprobs` (B, T)."""
    from safetensors.torch import load_file

    from gae.batch import RolloutBatch
    from gae.store import fill_training_logprobs

    lp = load_file(train_logprobs_path)["train_logprobs"]
    return fill_training_logprobs(
        data_dir, run_id=run_id, iteration=iteration, train_logprobs=lp, batch=RolloutBatch.load(batch_dir)
    )


@task(name="delete-iterations-after", retries=2, retry_delay_seconds=1, retry_condition_fn=unless_disk_full)
def delete_iterations_after(data_dir: str, run_id: str, iteration: int) -> list[int]:
    """Resume cleanup: drop stored iterations > `iteration` of the run; returns those removed."""
    from gae.store import delete_iterations_after as delete

    return delete(data_dir, run_id, iteration)

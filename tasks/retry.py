"""Which failures of a retried I/O task are worth a retry."""

from __future__ import annotations


def unless_disk_full(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry every failure but a full disk (`gae.errors.as_disk_full`).

    Space does not come back within a retry's delay of 1-2 s, and the one line that tells the
    user to free it ("free space and rerun the same command") should not wait behind retries."""
    from gae.errors import as_disk_full

    exc = state.data
    if not isinstance(exc, BaseException):
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # the failure cannot be read back: retry, as without a condition
            return True
    return not (isinstance(exc, BaseException) and as_disk_full(exc) is not None)

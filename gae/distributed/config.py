"""The `cluster` section of the pipeline config: where the pipeline's heavy stages run.

`executor: local` (the default) is one process, as before. `executor: ray` shards rollouts,
rewards and the per-token store over `workers` long-lived Ray actors and runs the PPO update
data-parallel over them (torch.distributed: gloo on CPU, NCCL on GPU); the flow, the config,
the numbers and the store stay the same (README, "Running on a cluster").
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ClusterConfig(BaseModel):
    """Where the pipeline's stages run: this process, or a pool of Ray workers."""

    model_config = ConfigDict(extra="forbid")

    executor: Literal["local", "ray"] = Field(
        "local",
        description="local: one process (no Ray needed); ray: rollouts, rewards and the store sharded over "
        "Ray workers and a data-parallel PPO update (needs the `ray` extra: pip install 'gaeflow[ray]').",
    )
    address: str | None = Field(
        None,
        description="Ray cluster to join: 'auto' (the cluster `ray start` runs on this machine), 'HOST:PORT' "
        "of a head node, or 'ray://HOST:10001' (Ray Client). None: Ray's RAY_ADDRESS when set, else a local "
        "Ray instance on this machine (loopback only), started for the run and stopped afterwards.",
    )
    workers: int = Field(
        2, ge=1, description="Ray workers (actors); each holds a policy, its reference and a rank."
    )
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves for each worker.")
    gpus_per_worker: float = Field(
        0.0, ge=0, description="GPUs Ray reserves for each worker (1: one worker per GPU; 0: CPU workers)."
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads in each worker; None: cpus_per_worker (at least 1), so workers on "
        "one machine do not oversubscribe its cores.",
    )
    shard_rewards: bool = Field(
        True,
        description="Score rewards on the workers, each its shard of rows. Every built-in component is per "
        "row; set false for a batched python reward or a SQL expression that looks across rows.",
    )
    start_timeout_s: float = Field(
        120.0, gt=0, description="How long to wait for the workers' resources (placement) before giving up."
    )

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip()
        if not v or any(c.isspace() for c in v):
            raise ValueError(f"cluster.address {v!r}: expected 'auto', 'HOST:PORT' or 'ray://HOST:PORT'")
        return v

    @property
    def threads(self) -> int:
        """torch intra-op threads per worker."""
        return self.torch_threads or max(1, int(self.cpus_per_worker))

"""Scale-out on Ray: sharded rollouts, rewards and store writes, data-parallel PPO.

Ray stays at the edge (verl's single controller): `gae.distributed.cluster` is the only
module that imports Ray (start or join a cluster, place the workers, call them, turn a dead
worker into one clear error); `gae.distributed.worker` is a plain class that the cluster
module turns into a Ray actor, so it runs (and is tested) without Ray too. The math it calls
(`gae.rollout`, `gae.rewards`, `gae.train`) is the single-process code, unchanged: the
distributed path is checked against the single-process run, number for number.

Nothing here is imported by `import gae`; `ClusterConfig` (the `cluster` section of the
pipeline config) imports neither Ray nor torch.
"""

"""The pipeline's Ray cluster: start or join it, place the workers, call them, and turn a dead
worker into one clear error. The only module of the project that imports Ray.

    pool = start_pool(ClusterConfig(executor="ray", workers=2))   # local Ray, or join cfg.address
    call = pool.submit("sample", [(args of rank 0), (args of rank 1)], what="rollout", iteration=3)
    pool.wait(call, 0); pool.results(call)                          # per rank, in rank order
    pool.close()                                                    # actors gone; a Ray it started, stopped

Placement: one bundle of {CPU: cpus_per_worker, GPU: gpus_per_worker} per worker in a PACK
placement group (the workers of a data-parallel group land on as few nodes as fit, as Ray
Train places them); with gpus_per_worker=1 each worker owns one GPU (Ray sets its
CUDA_VISIBLE_DEVICES) and the update's collectives use NCCL, gloo otherwise.

A pool has an id; tasks pass the id and look the pool up in this process (`get_pool`), so
Prefect task parameters stay strings.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import sys
import uuid
from collections.abc import Callable

from gae.distributed.config import ClusterConfig

RAY_EXTRA = "pip install 'gaeflow[ray]'"
# Ray 2.x picks the machine's network address for a local instance; with "cluster mode" off it
# uses loopback instead, so a run's own Ray instance is reachable from this machine only. Read
# by Ray when it is imported (and by the processes it spawns), so it is set before the import.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
CONNECT_TIMEOUT_S = 5.0


class WorkerDied(RuntimeError):
    """A worker process ended during a stage (killed, out of memory, node lost)."""


def import_ray(*, local_start: bool):
    """`ray`, or a one-line error saying how to install it."""
    if local_start and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ENV, "0")
    try:
        import ray
    except ImportError:
        raise RuntimeError(f"cluster.executor=ray needs Ray, which is not installed: {RAY_EXTRA}") from None
    return ray


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse an address nothing answers at, in seconds (Ray itself retries for minutes)."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"cluster.address={address!r}: expected 'auto', 'HOST:PORT' or 'ray://HOST:PORT'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ValueError(
            f"cluster.address={address!r}: no Ray cluster answers at {host}:{port} ({reason}); start one with "
            "`ray start --head` or fix the address"
        ) from None


def target_address(cfg: ClusterConfig) -> str | None:
    """The cluster to join: `cluster.address`, else Ray's own `RAY_ADDRESS`; None starts a local one."""
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


def connect(ray, cfg: ClusterConfig) -> bool:
    """Start a local Ray instance (no address) or join `target_address(cfg)`; returns whether
    this call started one (and so must stop it). A process already connected keeps its connection."""
    if ray.is_initialized():
        return False
    address = target_address(cfg)
    if address is None:
        cpus = max(os.cpu_count() or 1, math.ceil(cfg.workers * cfg.cpus_per_worker))
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, namespace="gaeflow")
        return True
    check_address(address)
    try:
        ray.init(address=address, namespace="gaeflow")
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cluster.address={address!r}: cannot join the Ray cluster: {first}") from None
    return False


def _actor_class(ray):
    from gae.distributed.worker import Worker

    class GaeWorker(Worker):
        def node_ip(self) -> str:
            import ray

            return ray.util.get_node_ip_address()

    return ray.remote(GaeWorker)


def _short_reason(err: BaseException) -> str:
    """The first sentence of Ray's "Worker exit detail" (e.g. "Worker unexpectedly exits with a
    connection error code 2."), else the error's first line: one line, not Ray's paragraph."""
    text = str(err)
    m = re.search(r"exit detail:\s*(.*?\.)(?:\s|$)", text, flags=re.IGNORECASE | re.DOTALL)
    if m:
        return " ".join(m.group(1).split())
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return first[:300]


class WorkerPool:
    """`size` workers placed on the cluster; `submit` starts a method on every rank at once."""

    def __init__(self, ray, cfg: ClusterConfig, actors: list, infos: list[dict], pg, started: bool):
        self.ray, self.cfg, self.actors, self.infos, self.pg, self.started = (
            ray,
            cfg,
            actors,
            infos,
            pg,
            started,
        )
        self.id = f"pool-{uuid.uuid4().hex[:12]}"
        self._calls: dict[str, tuple[str, int | None, dict[int, object]]] = {}

    @property
    def size(self) -> int:
        return len(self.actors)

    def submit(
        self, method: str, per_rank: dict[int, tuple], *, what: str, iteration: int | None = None
    ) -> str:
        """Start `method(*args)` on each rank in `per_rank` (all at once: collectives need every
        rank running); returns the call's id for `wait` and `results`."""
        refs = {r: getattr(self.actors[r], method).remote(*args) for r, args in per_rank.items()}
        call = f"{method}-{uuid.uuid4().hex[:8]}"
        self._calls[call] = (what, iteration, refs)
        return call

    def ranks(self, call: str) -> list[int]:
        return sorted(self._calls[call][2])

    def wait(self, call: str, rank: int):
        """Rank `rank`'s result of `call`; a dead worker raises WorkerDied, an error inside the
        worker is raised again here with the rank in front."""
        what, iteration, refs = self._calls[call]
        try:
            return self.ray.get(refs[rank])
        except self.ray.exceptions.RayActorError as e:
            info = self.infos[rank]
            where = f"{what} of iteration {iteration}" if iteration is not None else what
            hint = (
                f"; run the same command again to resume from iteration {iteration}"
                if iteration is not None
                else ""
            )
            raise WorkerDied(
                f"Ray worker {rank} (pid {info['pid']} on {info['host']}) died during {where}: "
                f"{_short_reason(e)}{hint}"
            ) from None
        except self.ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, Exception):
                try:
                    err = type(cause)(f"worker {rank}: {cause}")
                except Exception:
                    err = RuntimeError(f"worker {rank}: {type(cause).__name__}: {cause}")
                raise err from e
            raise

    def results(self, call: str) -> list:
        """Every rank's result of `call`, in rank order (the call is forgotten afterwards)."""
        out = [self.wait(call, r) for r in self.ranks(call)]
        self._calls.pop(call, None)
        return out

    def run(
        self, method: str, per_rank: dict[int, tuple], *, what: str, iteration: int | None = None
    ) -> list:
        return self.results(self.submit(method, per_rank, what=what, iteration=iteration))

    def close(self) -> None:
        """Stop the workers and free their placement; stop Ray if this pool started it."""
        _POOLS.pop(self.id, None)
        ray = self.ray
        for a in self.actors:
            with contextlib.suppress(Exception):  # already dead
                ray.kill(a, no_restart=True)
        if self.pg is not None:
            with contextlib.suppress(Exception):
                ray.util.remove_placement_group(self.pg)
        if self.started and ray.is_initialized():
            ray.shutdown()


_POOLS: dict[str, WorkerPool] = {}


def get_pool(pool_id: str) -> WorkerPool:
    pool = _POOLS.get(pool_id)
    if pool is None:
        raise RuntimeError(
            f"no worker pool {pool_id!r} in this process (stopped, or started by another process)"
        )
    return pool


def _placement(ray, cfg: ClusterConfig):
    from ray.util.placement_group import placement_group

    total = ray.cluster_resources()
    need_gpu = cfg.workers * cfg.gpus_per_worker
    have_gpu = float(total.get("GPU", 0.0))
    if need_gpu > have_gpu:
        raise ValueError(
            f"cluster asks for {need_gpu:g} GPUs ({cfg.workers} workers x cluster.gpus_per_worker="
            f"{cfg.gpus_per_worker:g}) but the Ray cluster has {have_gpu:g}"
        )
    bundle = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {})}
    pg = placement_group([dict(bundle) for _ in range(cfg.workers)], strategy="PACK")
    ready, _ = ray.wait([pg.ready()], timeout=cfg.start_timeout_s)
    if not ready:
        ray.util.remove_placement_group(pg)
        raise ValueError(
            f"cluster: could not place {cfg.workers} workers of {bundle} within {cfg.start_timeout_s:g} s; "
            f"the Ray cluster has {{CPU: {total.get('CPU', 0):g}, GPU: {have_gpu:g}}} in all"
        )
    return pg


def start_pool(
    cfg: ClusterConfig, *, device: str = "auto", log: Callable[[str], None] | None = None
) -> WorkerPool:
    """Connect (`connect`), place `cfg.workers` workers, wait until each has started, and join
    them in a torch.distributed process group (gloo, or NCCL on GPU workers) for the update."""
    ray = import_ray(local_start=target_address(cfg) is None and not _connected())
    started = connect(ray, cfg)
    pg, actors = None, []
    try:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pg = _placement(ray, cfg)
        cls = _actor_class(ray)
        for rank in range(cfg.workers):
            actors.append(
                cls.options(
                    num_cpus=cfg.cpus_per_worker,
                    num_gpus=cfg.gpus_per_worker,
                    max_restarts=0,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        pg, placement_group_bundle_index=rank
                    ),
                ).remote(rank, cfg.workers, threads=cfg.threads, device=device)
            )
        infos = ray.get([a.info.remote() for a in actors], timeout=cfg.start_timeout_s)
        if cfg.workers > 1:
            host = ray.get(actors[0].node_ip.remote())
            port = ray.get(actors[0].free_port.remote())
            backend = "nccl" if infos[0]["device"].startswith("cuda") else "gloo"
            ray.get(
                [a.init_process_group.remote(f"tcp://{host}:{port}", backend) for a in actors],
                timeout=cfg.start_timeout_s,
            )
    except BaseException:
        for a in actors:
            ray.kill(a, no_restart=True)
        if pg is not None:
            ray.util.remove_placement_group(pg)
        if started:
            ray.shutdown()
        raise
    pool = WorkerPool(ray, cfg, actors, infos, pg, started)
    _POOLS[pool.id] = pool
    if log is not None:
        where = (
            "a local Ray instance"
            if started
            else f"the Ray cluster at {ray.get_runtime_context().gcs_address}"
        )
        log(
            f"{cfg.workers} Ray workers on {where}: "
            + ", ".join(f"rank {i['rank']} pid {i['pid']} {i['host']} {i['device']}" for i in infos)
        )
    return pool


def _connected() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())

"""Starting actors: the one place that knows how a role becomes a Ray actor.

``spawn`` starts one actor; ``ActorGroup`` starts N ranks of one class in a placement group,
with rank 0's address as the rendezvous point of their process group (trainers, critics).
"""

from __future__ import annotations

import socket
from typing import Any, Protocol, TypeVar

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

# vLLM keeps its engine in the actor's own process (no engine subprocess) inside Ray actors.
ACTOR_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def _remote_class(
    cls: type, num_cpus: float, num_gpus: float, env_vars: dict[str, str] | None
) -> Any:
    """``cls`` as a Ray actor class with its resources and the project's environment."""
    runtime_env = {"env_vars": {**ACTOR_ENV, **(env_vars or {})}}
    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, runtime_env=runtime_env)(cls)


def spawn(
    cls: type,
    *args: Any,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    env_vars: dict[str, str] | None = None,
    **options: Any,
) -> ray.actor.ActorHandle:
    """Starts one actor of ``cls`` with its resources declared and the project's environment."""
    actor_cls = _remote_class(cls, num_cpus, num_gpus, env_vars)
    return actor_cls.options(**options).remote(*args)


def _free_address() -> tuple[str, int]:
    """This node's IP and a TCP port free on it right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    return ray.util.get_node_ip_address(), port


class Shardable(Protocol):
    """A batch the group can split by data-parallel rank (e.g. ``PreferenceBatch``)."""

    def shard(self, rank: int, world_size: int) -> Any:
        """The part of the batch that data-parallel rank ``rank`` of ``world_size`` trains on."""
        ...


B = TypeVar("B", bound=Shardable)


class ActorGroup:
    """N ranks of one actor class in a placement group (one bundle per rank).

    Each rank is constructed as ``cls(rank, world_size, master_addr, master_port, *args,
    **kwargs)``: ``master_addr:master_port`` is a free port on rank 0's node, found before the
    ranks start, so they can all build their process group in their constructors at once.

    Args:
        cls: the plain (not ``ray.remote``) class of one rank.
        num_ranks: N.
        args, kwargs: the rest of every rank's constructor arguments.
        num_cpus_per_rank, num_gpus_per_rank: one bundle's resources (logical Ray counts).
        resources_per_rank: custom Ray resources in each bundle (e.g. ``{"node_b": 0.01}``
            keeps the ranks on nodes started with that resource).
        strategy: the placement strategy ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD").
        env_vars: extra environment of every rank's process (e.g. ``DS_ACCELERATOR``).
        timeout_s: how long to wait for the cluster to place the bundles.
    """

    def __init__(
        self,
        cls: type,
        num_ranks: int,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        num_cpus_per_rank: float = 1.0,
        num_gpus_per_rank: float = 0.0,
        resources_per_rank: dict[str, float] | None = None,
        strategy: str = "PACK",
        env_vars: dict[str, str] | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        if num_ranks < 1:
            raise ValueError(f"an actor group needs at least one rank, got {num_ranks}")
        bundle = {"CPU": num_cpus_per_rank, "GPU": num_gpus_per_rank, **(resources_per_rank or {})}
        bundle = {key: value for key, value in bundle.items() if value > 0}
        if not bundle:
            raise ValueError("each rank needs resources: num_cpus_per_rank or num_gpus_per_rank")
        self.cls_name = cls.__name__
        self.placement_group = placement_group([dict(bundle)] * num_ranks, strategy=strategy)
        try:
            ray.get(self.placement_group.ready(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(self.placement_group)
            raise RuntimeError(
                f"{num_ranks} x {bundle} ({strategy}) for {self.cls_name} could not be placed in "
                f"{timeout_s:.0f} s; the cluster has {ray.cluster_resources()}, free "
                f"{ray.available_resources()}. Lower num_ranks or the per-rank resources."
            ) from None
        rank0 = PlacementGroupSchedulingStrategy(self.placement_group, 0)
        find = ray.remote(num_cpus=0)(_free_address).options(scheduling_strategy=rank0)
        self.master_addr, self.master_port = ray.get(find.remote())
        actor_cls = _remote_class(cls, num_cpus_per_rank, num_gpus_per_rank, env_vars)
        self.actors = [
            actor_cls.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement_group, rank),
                resources=resources_per_rank or {},
            ).remote(rank, num_ranks, self.master_addr, self.master_port, *args, **(kwargs or {}))
            for rank in range(num_ranks)
        ]

    def __len__(self) -> int:
        """N, the number of ranks."""
        return len(self.actors)

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[ray.ObjectRef]:
        """Calls ``method`` with the same arguments on every rank; one ObjectRef per rank."""
        return [getattr(actor, method).remote(*args, **kwargs) for actor in self.actors]

    def call_sharded(self, method: str, batch: B, *args: Any, **kwargs: Any) -> list[ray.ObjectRef]:
        """Calls ``method(batch.shard(rank, N), *args)`` on each rank; one ObjectRef per rank.

        Each shard goes into the object store once (``shard`` copies just its rows), and only its
        rank fetches it.
        """
        n = len(self.actors)
        shards = [ray.put(batch.shard(rank, n)) for rank in range(n)]
        return [
            getattr(actor, method).remote(shard, *args, **kwargs)
            for actor, shard in zip(self.actors, shards, strict=True)
        ]

    def kill(self) -> None:
        """Ends every rank and frees the placement group."""
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        remove_placement_group(self.placement_group)

"""Starting actors: the one place that knows how a role becomes a Ray actor.

``spawn`` starts one actor; ``ActorGroup`` starts N ranks of one class in a placement group,
with a ``Rendezvous`` on rank 0's node as the meeting point of their process group (trainers,
critics).
``SharedPlacement`` is one placement group several roles share (``ray.colocate``): rank i of
each role goes to its bundle i.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.rendezvous import Rendezvous
from rlhf.logs import actor_runtime_env

# vLLM keeps its engine in the actor's own process (no engine subprocess) inside Ray actors.
ACTOR_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def _remote_class(
    cls: type, num_cpus: float, num_gpus: float, env_vars: dict[str, str] | None
) -> Any:
    """``cls`` as a Ray actor class with its resources and the project's environment.

    While a job has a log directory, the actor's output goes to a file there (``rlhf.logs``).
    """
    to_log_file = actor_runtime_env(cls.__name__)
    runtime_env = {"env_vars": {**ACTOR_ENV, **to_log_file, **(env_vars or {})}}
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


def _place(bundles: list[dict[str, float]], strategy: str, timeout_s: float, what: str) -> Any:
    """A placement group of ``bundles``, ready; RuntimeError naming ``what`` if it cannot be."""
    group = placement_group(bundles, strategy=strategy)
    try:
        ray.get(group.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        raise RuntimeError(
            f"{what} could not be placed in {timeout_s:.0f} s; the cluster has "
            f"{ray.cluster_resources()}, free {ray.available_resources()}. Lower the counts or "
            f"the per-actor resources."
        ) from None
    return group


class SharedPlacement:
    """One placement group that several roles share: rank i of each role goes to bundle i.

    Bundle i holds the sum of what rank i of every role asks for (see
    ``rlhf.cluster.colocation.merged_bundles``); each actor still declares its own resources,
    so Ray fits the actors of a bundle inside it. The owner (the driver's scope) frees it with
    :meth:`kill` after the actors in it have ended.
    """

    def __init__(
        self, bundles: list[dict[str, float]], strategy: str, name: str, timeout_s: float = 120.0
    ) -> None:
        bundles = [{k: v for k, v in bundle.items() if v > 0} for bundle in bundles]
        self.name = name
        self.group = _place(bundles, strategy, timeout_s, f"{name}: {bundles} ({strategy})")

    def bundle(self, index: int) -> PlacementGroupSchedulingStrategy:
        """The scheduling strategy that puts an actor into bundle ``index``."""
        return PlacementGroupSchedulingStrategy(self.group, index)

    def kill(self) -> None:
        """Frees the placement group (its actors must have ended first)."""
        remove_placement_group(self.group)


def placement_here() -> tuple[str | None, int | None]:
    """The placement group (hex id) and bundle index of the calling actor; Nones outside one.

    Ray names the bundle only in the raw resource ids it assigned (``bundle_group_<i>_<pg>``).
    """
    group_id = ray.get_runtime_context().get_placement_group_id()
    if group_id is None:
        return None, None
    resource_ids = ray._private.worker.global_worker.core_worker.resource_ids()
    prefix, suffix = "bundle_group_", f"_{group_id}"
    for name in resource_ids:
        index = name.removeprefix(prefix).removesuffix(suffix)
        if name.startswith(prefix) and name.endswith(suffix) and index.isdigit():
            return group_id, int(index)
    return group_id, None


def _free_address() -> tuple[str, int]:
    """This node's address (the one Ray runs on) and a TCP port free on it right now."""
    host = ray.util.get_node_ip_address()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    return host, port


def _rank0_address(group: Any) -> tuple[str, int]:
    """A free address on the node of the placement group's bundle 0 (where rank 0 will run).

    Found right here when that is this process's node (a local cluster); else by a task placed in
    bundle 0, which waits for a worker process there to start and import this module (tens of
    seconds on a busy node, before any rank can start).
    """
    node = ray.util.placement_group_table(group)["bundles_to_node_id"].get(0)
    if node == ray.get_runtime_context().get_node_id():
        return _free_address()
    rank0 = PlacementGroupSchedulingStrategy(group, 0)
    find = ray.remote(num_cpus=0)(_free_address).options(scheduling_strategy=rank0)
    return ray.get(find.remote())


class Shardable(Protocol):
    """A batch the group can split by data-parallel rank (e.g. ``PreferenceBatch``)."""

    def shard(self, rank: int, world_size: int) -> Any:
        """The part of the batch that data-parallel rank ``rank`` of ``world_size`` trains on."""
        ...


B = TypeVar("B", bound=Shardable)


class ActorGroup:
    """N ranks of one actor class in a placement group (one bundle per rank).

    Each rank is constructed as ``cls(rank, world_size, rendezvous, *args, **kwargs)``: the
    ``Rendezvous`` is a free port on rank 0's node address, found before the ranks start, and
    the group's secret, so they can all build their process group in their constructors at once.

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
        shared: a placement group the ranks share with other roles (rank i in its bundle i);
            the group then neither creates nor frees a placement group of its own, and
            ``strategy`` is the shared group's.
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
        shared: SharedPlacement | None = None,
    ) -> None:
        if num_ranks < 1:
            raise ValueError(f"an actor group needs at least one rank, got {num_ranks}")
        bundle = {"CPU": num_cpus_per_rank, "GPU": num_gpus_per_rank, **(resources_per_rank or {})}
        bundle = {key: value for key, value in bundle.items() if value > 0}
        if not bundle:
            raise ValueError("each rank needs resources: num_cpus_per_rank or num_gpus_per_rank")
        self.cls_name = cls.__name__
        self.owns_placement = shared is None
        if shared is None:
            what = f"{num_ranks} x {bundle} ({strategy}) for {self.cls_name}"
            self.placement_group = _place([dict(bundle)] * num_ranks, strategy, timeout_s, what)
        else:
            self.placement_group = shared.group
        self.rendezvous = Rendezvous(*_rank0_address(self.placement_group))
        actor_cls = _remote_class(cls, num_cpus_per_rank, num_gpus_per_rank, env_vars)
        self.actors = [
            actor_cls.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement_group, rank),
                resources=resources_per_rank or {},
            ).remote(rank, num_ranks, self.rendezvous, *args, **(kwargs or {}))
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
        if self.owns_placement:
            remove_placement_group(self.placement_group)


class ActorStartError(RuntimeError):
    """Actors that did not finish starting in time; the message names them."""


def wait_started(roles: Mapping[str, Any], timeout_s: float, hint: str = "") -> None:
    """Waits until every actor's constructor has returned, ``timeout_s`` at most in all.

    ``roles``: a role name -> an actor handle, a list of them, or an :class:`ActorGroup`. An
    actor that raised while starting raises here; one still starting at the deadline is an
    :class:`ActorStartError` naming its role (and rank), the wait, and ``hint``.
    """
    pending: dict[Any, str] = {}
    for role, started in roles.items():
        actors = started.actors if isinstance(started, ActorGroup) else started
        if not isinstance(actors, list):
            actors = [actors]
        for rank, actor in enumerate(actors):
            name = role if len(actors) == 1 else f"{role} {rank}"
            pending[actor.__ray_ready__.remote()] = name  # runs once the constructor returned
    ready, late = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
    ray.get(ready)  # an actor whose constructor raised: its error
    if late:
        names = ", ".join(pending[ref] for ref in late)
        raise ActorStartError(
            f"{names} did not finish starting within {timeout_s:.0f} s (ray.start_timeout_s): "
            f"a start loads the model (and a trainer builds DeepSpeed's ops){hint}. Their "
            "logs are in Ray's session directory (/tmp/ray/session_latest/logs); raise "
            "ray.start_timeout_s if they are only slow"
        )

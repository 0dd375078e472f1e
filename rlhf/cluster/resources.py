"""Does a job's config fit the Ray cluster? Checked once Ray is up, before any actor starts.

A job is a few roles (trainer ranks, sampler engines, the reference, the reward actor), each
``count`` actors of one resource shape (a *bundle*: ``{"CPU": 1, "GPU": 1, "node_b": 0.01}``).
:func:`check_fit` compares them with the cluster's nodes and names everything that cannot fit:

    trainer: 2 ranks x 1 GPU need 2 GPU, the cluster has 0
    samplers: no node has the resource 'node_b' (the nodes have: CPU, node_a)
    trainer: STRICT_SPREAD puts each of the 4 ranks on its own node; 2 nodes can hold one

It is a pure function of the roles and the nodes (``ray.nodes()``), so it is tested without a
cluster; :func:`require_fit` reads the live cluster and raises. What it checks: every custom
resource exists; each role's total per resource; how many of a role's actors the nodes can hold
(an actor or a placement-group bundle never spans nodes), with STRICT_PACK / STRICT_SPREAD;
the roles of a stage together, per resource. Packing different roles onto the same nodes is
left to Ray (a placement group that cannot be placed times out with the cluster's free
resources in its message). It compares with what the nodes *have*, not what is free now:
a busy cluster is not a wrong config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlhf.config import ConfigError

if TYPE_CHECKING:
    from rlhf.models.deepspeed_config import TrainerConfig
    from rlhf.schema import EngineConfig

PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
# Ray's own resource names: set through num_cpus / num_gpus, or not requested by actors at all.
_RESERVED = ("CPU", "GPU", "memory", "object_store_memory")
_EPS = 1e-9


class ClusterFitError(ConfigError):
    """The config asks for more than the Ray cluster has; the message lists what is missing."""


@dataclass(frozen=True)
class Role:
    """What one role of a job asks of the cluster: ``count`` actors of one resource shape.

    Args:
        name: the role as the user knows it from the config (``trainer``, ``samplers``, ...).
        count: how many actors (ranks, engines).
        bundle: one actor's resources, Ray's names: ``{"CPU": 1, "GPU": 1, "node_b": 0.01}``.
        unit: what one actor is called in messages (``rank``, ``engine``, ``actor``).
        strategy: the placement-group strategy when the role is one placement group (one bundle
            per actor); None when each actor is placed on its own.
    """

    name: str
    count: int
    bundle: dict[str, float]
    unit: str = "actor"
    strategy: str | None = None


@dataclass(frozen=True)
class Node:
    """One live node of the cluster and the resources it has in total."""

    node_id: str
    address: str
    resources: dict[str, float]

    def label(self) -> str:
        """How messages name the node: its address and the start of its id."""
        return f"{self.address} ({self.node_id[:8]})"


def nodes_from_ray(entries: Sequence[dict[str, Any]]) -> list[Node]:
    """The live nodes in ``ray.nodes()``' answer."""
    return [
        Node(entry["NodeID"], entry.get("NodeManagerAddress", "?"), dict(entry["Resources"]))
        for entry in entries
        if entry.get("Alive", False)
    ]


def check_fit(stage: Sequence[Role], nodes: Sequence[Node]) -> list[str]:
    """What keeps the roles of ``stage`` (actors alive at the same time) from fitting the nodes.

    Returns one message per problem, empty when everything fits. Each role is checked alone
    first; the roles together only when each fits alone (so the first message is the cause).
    """
    totals = _totals(nodes)
    problems = [problem for role in stage for problem in _role_problems(role, nodes, totals)]
    if problems:
        return problems
    for key in sorted({key for role in stage for key in role.bundle}):
        parts = [(role, role.count * role.bundle[key]) for role in stage if key in role.bundle]
        need = sum(amount for _, amount in parts)
        if len(parts) > 1 and need > totals.get(key, 0.0) + _EPS:
            breakdown = ", ".join(f"{role.name} {_num(amount)}" for role, amount in parts)
            problems.append(
                f"{_names([role for role, _ in parts])} together need {_num(need)} {key} "
                f"({breakdown}), the cluster has {_num(totals.get(key, 0.0))}"
            )
    return problems


def require_fit(*stages: Sequence[Role]) -> None:
    """Raises :class:`ClusterFitError` when a stage does not fit the connected Ray cluster.

    ``stages``: the roles a job runs at the same time, one list per stage (a job that frees
    its reference server before the trainers start has two stages).
    """
    if not stages:
        return
    import ray

    nodes = nodes_from_ray(ray.nodes())
    problems = list(dict.fromkeys(p for stage in stages for p in check_fit(stage, nodes)))
    if problems:
        raise ClusterFitError(fit_report(problems, nodes))


def fit_report(problems: Sequence[str], nodes: Sequence[Node]) -> str:
    """The error message: the problems, what the cluster has, and what to do."""
    lines = [f"the config does not fit the Ray cluster ({_cluster_summary(nodes)}):"]
    lines += [f"  - {problem}" for problem in problems]
    lines.append(
        "Lower the counts or per-actor resources in the config, pin roles only to resources "
        "some node has, or add nodes (`ray status` lists what the cluster has). On an "
        "autoscaling cluster, where nodes appear on demand, set ray.check_resources: false."
    )
    return "\n".join(lines)


def check_custom_resources(resources: dict[str, float], field: str = "resources") -> None:
    """Raises ConfigError for a custom-resource request Ray would refuse or misread."""
    for key, amount in resources.items():
        if key in _RESERVED:
            raise ConfigError(
                f"{field}: {key!r} is set by num_cpus / num_gpus (or not requested), not here; "
                f"{field} holds custom resources, e.g. {{node_b: 0.01}}"
            )
        if amount <= 0:
            raise ConfigError(f"{field}.{key} must be > 0, got {amount}")


def trainer_role(name: str, trainer: TrainerConfig) -> Role:
    """A trainer group: ``num_ranks`` bundles in one placement group of the config's strategy."""
    bundle = _bundle(
        trainer.num_cpus_per_rank, trainer.num_gpus_per_rank, trainer.resources_per_rank
    )
    return Role(name, trainer.num_ranks, bundle, "rank", trainer.placement_strategy)


def engine_roles(name: str, engine: EngineConfig, count: int = 1) -> list[Role]:
    """``count`` vLLM engine actors; with tensor parallelism, also their GPU workers.

    With ``tensor_parallel_size`` t > 1 vLLM starts t workers of one GPU each through Ray (its
    own placement group, beside the engine actor), so they are a role of their own here.
    """
    roles = [
        Role(name, count, _bundle(engine.num_cpus, engine.num_gpus, engine.resources), "engine")
    ]
    if engine.tensor_parallel_size > 1:
        workers = count * engine.tensor_parallel_size
        roles.append(Role(f"{name} tensor-parallel workers", workers, {"GPU": 1.0}, "worker"))
    return roles


def actor_role(
    name: str, num_cpus: float, num_gpus: float, resources: dict[str, float] | None = None
) -> Role:
    """One actor started on its own (e.g. the reward actor)."""
    return Role(name, 1, _bundle(num_cpus, num_gpus, resources or {}))


def _bundle(num_cpus: float, num_gpus: float, resources: dict[str, float]) -> dict[str, float]:
    bundle = {"CPU": num_cpus, "GPU": num_gpus, **resources}
    return {key: float(amount) for key, amount in bundle.items() if amount > 0}


def _role_problems(role: Role, nodes: Sequence[Node], totals: dict[str, float]) -> list[str]:
    missing = [key for key in role.bundle if key not in totals]
    if missing:
        known = (
            ", ".join(sorted(k for k, v in totals.items() if v > 0 and not _internal(k)))
            or "nothing"
        )
        return [
            f"{role.name}: no node has the resource {key!r} (the nodes have: {known}; "
            f"a node gets one with `ray start --resources '{{\"{key}\": 100}}'`)"
            for key in missing
        ]
    problems = []
    for key, amount in role.bundle.items():
        need, have = role.count * amount, totals[key]
        if need > have + _EPS:
            problems.append(
                f"{role.name}: {_many(role.count, role.unit)} x {_num(amount)} {key} need "
                f"{_num(need)} {key}, the cluster has {_num(have)}"
            )
    if problems or not role.bundle:
        return problems
    per_node = [_fits_on(node, role.bundle) for node in nodes]
    shape = f"of {_describe(role.bundle)}"
    if role.strategy == "STRICT_PACK" and max(per_node, default=0) < role.count:
        return [
            f"{role.name}: STRICT_PACK puts all {_many(role.count, role.unit)} {shape} on one "
            f"node; the largest holds {max(per_node, default=0)}"
        ]
    holders = sum(1 for fits in per_node if fits >= 1)
    if role.strategy == "STRICT_SPREAD" and holders < role.count:
        return [
            f"{role.name}: STRICT_SPREAD puts each of the {_many(role.count, role.unit)} on its "
            f"own node; {holders} node(s) can hold one {shape}"
        ]
    if sum(per_node) < role.count:
        if holders == 0:
            largest = ", ".join(
                f"{n.label()}: {_describe(_relevant(n, role.bundle))}" for n in nodes
            )
            return [
                f"{role.name}: one {role.unit} needs {_describe(role.bundle)} on a single node, "
                f"and no node has that much ({largest})"
            ]
        return [
            f"{role.name}: the nodes hold only {sum(per_node)} of the "
            f"{_many(role.count, role.unit)} {shape} (one {role.unit} never spans nodes)"
        ]
    return []


def _fits_on(node: Node, bundle: dict[str, float]) -> int:
    """How many actors of this shape the node holds."""
    return min(
        math.floor(node.resources.get(key, 0.0) / amount + _EPS) for key, amount in bundle.items()
    )


def _totals(nodes: Sequence[Node]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for node in nodes:
        for key, amount in node.resources.items():
            totals[key] = totals.get(key, 0.0) + amount
    if nodes:
        totals.setdefault("GPU", 0.0)  # "the cluster has 0 GPU", not "no node has 'GPU'"
        totals.setdefault("CPU", 0.0)
    return totals


def _internal(key: str) -> bool:
    return key in ("memory", "object_store_memory") or key.startswith(("node:", "accelerator_"))


def _relevant(node: Node, bundle: dict[str, float]) -> dict[str, float]:
    return {key: node.resources.get(key, 0.0) for key in bundle}


def _cluster_summary(nodes: Sequence[Node]) -> str:
    totals = _totals(nodes)
    custom = sorted(key for key in totals if key not in ("CPU", "GPU") and not _internal(key))
    shown = {key: totals[key] for key in ["CPU", "GPU", *custom] if key in totals}
    return f"{_many(len(nodes), 'node')}: {_describe(shown) or 'nothing'}"


def _describe(resources: dict[str, float]) -> str:
    return ", ".join(f"{_num(amount)} {key}" for key, amount in resources.items())


def _many(count: int, unit: str) -> str:
    return f"{count} {unit}" if count == 1 else f"{count} {unit}s"


def _names(roles: Sequence[Role]) -> str:
    names = [role.name for role in roles]
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]


def _num(value: float) -> str:
    return f"{value:g}"

"""Colocation groups: roles that share one placement group, rank i of each in bundle i.

``ray.colocate: [[trainer, reference], [critic, samplers]]`` puts trainer rank 0 and the
reference server in bundle 0 of one placement group, trainer rank 1 alone in bundle 1, and so
on; on GPUs each role asks for a fraction of the bundle's GPU (``num_gpus_per_rank: 0.5``,
``engine.num_gpus: 0.5``), so they share one device, as OpenRLHF's and veRL's colocated modes do.

Bundle arithmetic (decided here, used by the driver and by the fit check):

- Bundle i holds rank i of every role that has one, so its resources are the **sum** of those
  ranks' requests (Ray schedules the actors of a bundle inside it). A bundle may hold at most
  one GPU: roles that share a device must split it (their GPU requests sum to <= 1).
- The fit check (``rlhf.cluster.resources``) counts the group once, as one role of
  ``max(counts)`` bundles each shaped like the **element-wise max** over the group's bundles;
  exact when the roles have equal counts, on the safe side otherwise.

Pure functions of the roles (no Ray), so they are tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Sequence

from rlhf.cluster.resources import Role
from rlhf.config import ConfigError

_EPS = 1e-9


def check_groups(groups: Sequence[Sequence[str]], roles: Sequence[Role]) -> None:
    """Raises ConfigError for a ``ray.colocate`` value the job's ``roles`` cannot honour.

    Unknown role names, a role in two groups, a group of fewer than two roles, tensor-parallel
    engines (their GPU workers live in vLLM's own placement group), trainer groups with
    different placement strategies, and a bundle that would hold more than one GPU.
    """
    by_name = {role.name: role for role in roles}
    seen: dict[str, int] = {}
    for index, group in enumerate(groups):
        where = f"ray.colocate[{index}]"
        if len(group) < 2:
            raise ConfigError(
                f"{where} is {list(group)}: a colocation group needs at least two roles "
                "(a role alone already has its own actors or placement group)"
            )
        for name in group:
            if name not in by_name:
                raise ConfigError(
                    f"{where}: {name!r} is not a role this job runs at the same time as the "
                    f"others; its roles are {', '.join(_colocatable(roles))}"
                )
            if name in seen:
                raise ConfigError(
                    f"{where}: {name!r} is already in ray.colocate[{seen[name]}]; a role belongs "
                    "to one colocation group at most"
                )
            seen[name] = index
            if f"{name} tensor-parallel workers" in by_name:
                raise ConfigError(
                    f"{where}: {name!r} has tensor_parallel_size > 1, whose GPU workers vLLM "
                    "places itself; colocate only engines with tensor_parallel_size: 1"
                )
        members = [by_name[name] for name in group]
        group_strategy(members, where)
        for bundle_index, bundle in enumerate(merged_bundles(members)):
            gpus = bundle.get("GPU", 0.0)
            if gpus > 1.0 + _EPS:
                parts = " + ".join(
                    f"{role.name} {role.bundle.get('GPU', 0.0):g}"
                    for role in members
                    if role.count > bundle_index
                )
                raise ConfigError(
                    f"{where}: bundle {bundle_index} would hold {gpus:g} GPU ({parts}); "
                    "colocated roles share one GPU, so their num_gpus must sum to at most 1 "
                    "(e.g. 0.5 each)"
                )


def merged_bundles(members: Sequence[Role]) -> list[dict[str, float]]:
    """The group's placement-group bundles: bundle i sums rank i's request of every role."""
    bundles: list[dict[str, float]] = []
    for index in range(max(role.count for role in members)):
        bundle: dict[str, float] = {}
        for role in members:
            if role.count > index:
                for key, amount in role.bundle.items():
                    bundle[key] = bundle.get(key, 0.0) + amount
        bundles.append(bundle)
    return bundles


def group_strategy(members: Sequence[Role], where: str = "ray.colocate") -> str:
    """The placement strategy of a group: its trainer roles' (they must agree), else PACK."""
    strategies = {role.strategy for role in members if role.strategy is not None}
    if len(strategies) > 1:
        named = ", ".join(f"{r.name} {r.strategy}" for r in members if r.strategy is not None)
        raise ConfigError(
            f"{where}: the roles ask for different placement strategies ({named}); one "
            "placement group has one strategy, so set the same placement_strategy"
        )
    return strategies.pop() if strategies else "PACK"


def group_name(members: Sequence[Role]) -> str:
    """How messages name a colocation group: ``trainer+reference``."""
    return "+".join(role.name for role in members)


def colocate_roles(roles: Sequence[Role], groups: Sequence[Sequence[str]]) -> list[Role]:
    """``roles`` with each colocation group replaced by one role for the fit check.

    The group's role has ``max(counts)`` bundles shaped like the element-wise max of the
    group's :func:`merged_bundles` (see the module docstring); roles in no group stay as they
    are. Raises ConfigError as :func:`check_groups` does.
    """
    check_groups(groups, roles)
    by_name = {role.name: role for role in roles}
    grouped = {name for group in groups for name in group}
    result = [role for role in roles if role.name not in grouped]
    for group in groups:
        members = [by_name[name] for name in group]
        shape: dict[str, float] = {}
        for bundle in merged_bundles(members):
            for key, amount in bundle.items():
                shape[key] = max(shape.get(key, 0.0), amount)
        count = max(role.count for role in members)
        result.append(Role(group_name(members), count, shape, "bundle", group_strategy(members)))
    return result


def _colocatable(roles: Sequence[Role]) -> list[str]:
    return [role.name for role in roles if not role.name.endswith(" tensor-parallel workers")]

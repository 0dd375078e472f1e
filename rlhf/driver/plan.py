"""``--dry-run``: every check a job makes before it starts, and what it would start; no training.

    rlhf train configs/dpo.yaml --dry-run

The config is loaded and validated by the caller. Then: the model is found (the embedded one is
built or taken from the cache) and its tokenizer and Hugging Face config are read; the job's
data is read and checked (offline DPO: every row, without the reference pass) or its prompts
drawn; the roles' resources are checked against the cluster (a local run: ``ray.num_cpus`` and
this machine's GPUs, without starting Ray; with ``ray.address`` set, nothing is checked, since a
dry run does not connect); and the plan is printed: roles, actors, resources, steps or rounds.

A training loop says what it starts and how long it runs through its registration
(``rlhf.driver.loops``): ``stages(cfg)`` and ``schedule(cfg, model_path)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from rlhf.cluster.colocation import colocate_roles
from rlhf.cluster.resources import ClusterFitError, Node, Role, check_fit, fit_report
from rlhf.driver.checks import check_local_device
from rlhf.driver.common import cluster_address, resolve_model_path

Stages = Callable[[Any], Sequence[Sequence[Role]]]
Schedule = Callable[[Any, str], list[str]]


def dry_run(cfg: Any, stages: Stages | None, schedule: Schedule | None, title: str) -> None:
    """Runs every check of the job ``cfg`` short of starting Ray, and prints its plan.

    ``stages``: the roles the job holds at the same time, one list per stage (None: the job
    does not say); ``schedule``: reads the job's data or prompts and describes its length.
    Raises what the job itself would raise (ConfigError, DataError, ClusterFitError).
    """
    lines = [f"dry run: {title}", "config: valid"]
    if hasattr(cfg, "device"):
        check_local_device(cfg.device, cluster_address(cfg.ray))
    model_path = resolve_model_path(cfg.model, progress=False)
    lines.append(f"model: {model_path} ({describe_model(cfg.model, model_path)})")
    if schedule is not None:
        lines += schedule(cfg, model_path)
    job_stages = [] if stages is None else list(stages(cfg))
    for number, stage in enumerate(job_stages, 1):
        name = f"stage {number}" if len(job_stages) > 1 else "roles"
        lines.append(f"{name}:")
        lines += [f"  {describe_role(role)}" for role in stage]
    lines.append(f"resources: {check_resources(cfg.ray, job_stages)}")
    lines.append("nothing was started or trained (--dry-run)")
    print("\n".join(lines))


def describe_model(model: Any, model_path: str) -> str:
    """Its architecture and vocabulary, read from its config and tokenizer files."""
    from transformers import AutoConfig

    from rlhf.models.tokenizer import load_tokenizer

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=model.trust_remote_code)
    tokenizer = load_tokenizer(model_path, model.trust_remote_code)  # the jobs' own loader
    architectures = ", ".join(getattr(config, "architectures", None) or [config.model_type])
    return f"{architectures}, tokenizer of {len(tokenizer)} tokens, dtype {model.dtype}"


def describe_role(role: Role) -> str:
    """``trainer: 2 ranks x {CPU: 1} (PACK)``."""
    bundle = ", ".join(f"{key}: {amount:g}" for key, amount in role.bundle.items()) or "nothing"
    units = role.unit if role.count == 1 else f"{role.unit}s"
    strategy = f" ({role.strategy})" if role.strategy else ""
    return f"{role.name}: {role.count} {units} x {{{bundle}}}{strategy}"


def check_resources(ray_cfg: Any, stages: Sequence[Sequence[Role]]) -> str:
    """Whether the stages fit the cluster the job would use; raises ClusterFitError if not.

    A local run is checked against the Ray it would start (``ray.num_cpus`` logical CPUs, this
    machine's GPUs); a cluster (``ray.address``, or the Ray job this runs in) is not contacted.
    """
    if not stages:
        return "not checked (the job names no roles)"
    if not ray_cfg.check_resources:
        return "not checked (ray.check_resources: false)"
    address = cluster_address(ray_cfg)
    if address is not None:
        return (
            f"not checked: the job joins the cluster at {address}, and a dry run does not connect"
        )
    nodes = [local_node(ray_cfg.num_cpus)]
    stages = [colocate_roles(stage, ray_cfg.colocate) for stage in stages]
    problems = list(dict.fromkeys(p for stage in stages for p in check_fit(stage, nodes)))
    if problems:
        raise ClusterFitError(fit_report(problems, nodes))
    have = nodes[0].resources
    return f"fit the local Ray it would start ({have['CPU']:g} CPU, {have['GPU']:g} GPU)"


def local_node(num_cpus: int | None) -> Node:
    """The node a local ``ray.init(num_cpus=...)`` would have (no custom resources)."""
    return Node(
        "local", "127.0.0.1", {"CPU": float(num_cpus or os.cpu_count() or 1), "GPU": _gpus()}
    )


def _gpus() -> float:
    try:
        import torch
    except ImportError:
        return 0.0
    return float(torch.cuda.device_count())


def online_plan(algorithm: Callable[[Any], Any]) -> dict[str, Callable]:
    """The ``stages`` and ``schedule`` entries of an online loop's registration, read from its
    ``OnlineAlgorithm`` (``rlhf.driver.online_loop``): one stage of its roles; its rounds and
    prompts (drawn here as the run would draw them)."""

    def stages(cfg: Any) -> list[list[Role]]:
        return [algorithm(cfg).roles]

    def schedule(cfg: Any, model_path: str) -> list[str]:
        from rlhf.driver.online_loop import round_prompts

        sizes = algorithm(cfg).sizes
        _, held_out = round_prompts(cfg, sizes, model_path)  # reads and checks them
        train, k = sizes.rounds * sizes.prompts_per_round, cfg.samplers.sampling.n
        return [
            f"prompts: {train} training prompts, {len(held_out)} held out; {k} samples each",
            f"schedule: {sizes.rounds} rounds of {sizes.prompts_per_round} prompts",
        ]

    return {"stages": stages, "schedule": schedule}


def sampling_job_stages(cfg: Any) -> list[list[Role]]:
    """``rlhf sample`` and ``rlhf make-data``: one sampler engine and the reward actor."""
    from rlhf.cluster.resources import actor_role, engine_roles

    reward = cfg.reward
    return [
        [
            *engine_roles("samplers", cfg.engine),
            actor_role("reward", reward.num_cpus, reward.num_gpus, reward.resources),
        ]
    ]


def sampling_job_schedule(cfg: Any, model_path: str) -> list[str]:
    """The prompts ``rlhf sample`` or ``rlhf make-data`` draws (drawn here too), and the file
    ``make-data`` would write."""
    from rlhf.data.prompts import draw_prompts, job_prompts

    source = job_prompts(cfg.prompts, cfg.seed, model_path, cfg.model.trust_remote_code)
    prompts = draw_prompts(source, cfg.num_prompts, getattr(cfg, "split", None))
    lines = [f"prompts: {len(prompts)}, {cfg.sampling.n} samples each"]
    if hasattr(cfg, "output"):
        lines.append(f"output: {cfg.output} (not written by a dry run)")
    return lines

"""Pieces every job's driver starts with: the model path and a Ray session."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from rlhf import logs
from rlhf.cluster.colocation import colocate_roles
from rlhf.cluster.resources import Role, require_fit
from rlhf.config import ConfigError
from rlhf.schema import EMBEDDED_MODEL, EngineConfig, ModelConfig, RayConfig


def resolve_model_path(model: ModelConfig, progress: bool = True) -> str:
    """The directory (or hub name) to load; builds the embedded tiny model on first use.

    A path that is no causal LM's directory or hub name is a :class:`ConfigError` naming
    ``model.path`` (see ``rlhf.driver.checks.check_model_path``).
    """
    if model.path != EMBEDDED_MODEL:
        from rlhf.driver.checks import check_model_path

        return check_model_path(model.path)
    from rlhf.task import build_tiny_model

    return str(build_tiny_model(progress=progress))


class ActorScope:
    """The actors and groups a job started; all of them end when the job does, even on error.

    On a shared cluster a failed job must not keep its placement groups (and GPUs) reserved.
    """

    def __init__(self) -> None:
        self._owned: list[Any] = []

    def own(self, started: Any) -> Any:
        """Registers an actor handle, a list of them, or a group (anything with ``kill()``)."""
        self._owned.append(started)
        return started

    def close(self) -> None:
        import ray

        for item in reversed(self._owned):
            for one in item if isinstance(item, list) else [item]:
                with contextlib.suppress(Exception):  # already dead: nothing to free
                    one.kill() if hasattr(one, "kill") else ray.kill(one)
        self._owned.clear()


def cluster_address(cfg: RayConfig) -> str | None:
    """The Ray cluster a job joins; None: start a local Ray.

    ``ray.address`` when set; otherwise the cluster of the Ray job this driver runs in, which
    Ray gives the driver in ``RAY_ADDRESS`` (``rlhf submit`` and ``ray job submit`` both do).
    A dashboard URL there (``http://...``, set for the ``ray job`` commands) is not a cluster
    a driver can join, so it is ignored.
    """
    if cfg.address is not None:
        return cfg.address
    from_job = os.environ.get("RAY_ADDRESS", "")
    return from_job if from_job and not from_job.startswith(("http://", "https://")) else None


LOCAL_NODE_IP = "127.0.0.1"
# Ray takes 127.0.0.1 as a node address only where it runs no clusters (macOS, Windows), and
# otherwise swaps in the machine's outward address, on which its processes then listen.
_RAY_CLUSTERS_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def init_local_ray(**options: Any) -> None:
    """``ray.init`` of a local Ray whose node address is 127.0.0.1: Ray's processes, and ours
    (which bind Ray's node address: ``rlhf.models.weight_broadcast.node_address``), listen on
    loopback only. Nothing off this machine can join a local run, so nothing needs to reach it.

    Ray swaps a loopback node address for the outward one unless it believes it runs on a
    single-machine platform (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``): that setting holds for
    the processes this call starts, and for this process only during the call.
    """
    import ray
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER, os.environ.get(_RAY_CLUSTERS_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[_RAY_CLUSTERS_ENV] = "0"  # raylet and GCS inherit it, and pass it to workers
    try:
        ray.init(
            address="local",
            _node_ip_address=LOCAL_NODE_IP,
            include_dashboard=False,  # a local run needs no dashboard listening
            **options,
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved[0]
        if saved[1] is None:
            os.environ.pop(_RAY_CLUSTERS_ENV, None)
        else:
            os.environ[_RAY_CLUSTERS_ENV] = saved[1]


@contextlib.contextmanager
def ray_session(cfg: RayConfig, *stages: Sequence[Role]) -> Iterator[ActorScope]:
    """Joins the job's cluster (:func:`cluster_address`), or starts a local Ray that ends with it.

    ``stages``: the roles the job runs at the same time, one list per stage (see
    ``rlhf.cluster.resources``); each ``ray.colocate`` group counts once (see
    ``rlhf.cluster.colocation``). A config the cluster cannot hold is rejected here, before any
    actor starts, unless ``ray.check_resources`` is off. Yields the job's :class:`ActorScope`;
    its actors are killed when the block exits.

    The console shows the actors' output only with ``--verbose``; otherwise it goes to the run
    directory's ``logs/`` (``rlhf.logs``), which the job stops writing when the block exits.
    """
    import ray

    if cfg.colocate and not stages:
        raise ConfigError(
            f"ray.colocate is {cfg.colocate}, but this job starts no roles that could share a "
            "placement group; remove ray.colocate"
        )
    stages = tuple(colocate_roles(stage, cfg.colocate) for stage in stages)
    started = False
    if not ray.is_initialized():
        address = cluster_address(cfg)
        if address is None:  # "local": never the cluster a ray_current_cluster file points to
            init_local_ray(num_cpus=cfg.num_cpus, **logs.ray_init_options(local=True))
        else:
            ray.init(address=address, **logs.ray_init_options(local=False))
        started = True
    logs.route_library_loggers()  # ray.init put its own console handler back on "ray"
    scope = ActorScope()
    try:
        if cfg.check_resources:
            require_fit(*stages)
        yield scope
    finally:
        scope.close()
        if started:
            ray.shutdown()
        logs.end_job_logs()


def start_samplers(
    count: int,
    engine: EngineConfig,
    model: ModelConfig,
    model_path: str,
    seed: int,
    ray_cfg: RayConfig,
    shared=None,
    lora: dict[str, Any] | None = None,
) -> list:
    """``count`` sampler actors, each with its own vLLM engine and seed.

    Ray restarts a sampler whose process died (``ray_cfg.max_restarts``); it comes back with
    the initial weights, which the driver's retry replaces (see ``rlhf.driver.retry``).
    ``shared``: a colocation group's ``SharedPlacement`` (engine i in bundle i), or None.
    ``lora``: the engines' LoRA settings (``EngineSettings`` fields: ``max_lora_rank``,
    ``lora_target_modules``); None: no LoRA.
    """
    from actors.group import spawn
    from actors.sampler import Sampler

    return [
        spawn(
            Sampler,
            replace(engine.settings(model, model_path, seed + i), **(lora or {})),
            num_cpus=engine.num_cpus,
            num_gpus=engine.num_gpus,
            resources=engine.resources,
            env_vars=ray_cfg.env_vars,
            max_restarts=ray_cfg.max_restarts,
            **in_bundle(shared, i),
        )
        for i in range(count)
    ]


def in_bundle(shared, index: int) -> dict[str, Any]:
    """``spawn`` options that put an actor into bundle ``index`` of ``shared`` (None: none)."""
    return {} if shared is None else {"scheduling_strategy": shared.bundle(index)}


def start_reward(cfg, ray_cfg: RayConfig, shared=None):
    """The reward actor of the config's reward source (restarted by Ray if its process dies).

    ``shared``: a colocation group's ``SharedPlacement`` (the actor in bundle 0), or None.
    """
    from actors.group import spawn
    from actors.reward import RewardActor

    return spawn(
        RewardActor,
        cfg,
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
        resources=cfg.resources,
        env_vars=ray_cfg.env_vars,
        max_restarts=ray_cfg.max_restarts,
        **in_bundle(shared, 0),
    )

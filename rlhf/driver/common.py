"""Pieces every job's driver starts with: the model path and a Ray session."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rlhf.schema import EMBEDDED_MODEL, EngineConfig, ModelConfig, RayConfig


def resolve_model_path(model: ModelConfig, progress: bool = True) -> str:
    """The directory (or hub name) to load; builds the embedded tiny model on first use."""
    if model.path != EMBEDDED_MODEL:
        return model.path
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


@contextlib.contextmanager
def ray_session(cfg: RayConfig) -> Iterator[ActorScope]:
    """Joins the configured cluster, or starts a local Ray that ends with the job.

    Yields the job's :class:`ActorScope`; its actors are killed when the block exits.
    """
    import ray

    started = False
    if not ray.is_initialized():
        if cfg.address is None:
            ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=True)
        else:
            ray.init(address=cfg.address)
        started = True
    scope = ActorScope()
    try:
        yield scope
    finally:
        scope.close()
        if started:
            ray.shutdown()


def start_samplers(
    count: int,
    engine: EngineConfig,
    model: ModelConfig,
    model_path: str,
    seed: int,
    ray_cfg: RayConfig,
) -> list:
    """``count`` sampler actors, each with its own vLLM engine and seed.

    Ray restarts a sampler whose process died (``ray_cfg.max_restarts``); it comes back with
    the initial weights, which the driver's retry replaces (see ``rlhf.driver.retry``).
    """
    from actors.group import spawn
    from actors.sampler import Sampler

    return [
        spawn(
            Sampler,
            engine.settings(model, model_path, seed + i),
            num_cpus=engine.num_cpus,
            num_gpus=engine.num_gpus,
            env_vars=ray_cfg.env_vars,
            max_restarts=ray_cfg.max_restarts,
        )
        for i in range(count)
    ]


def start_reward(cfg, ray_cfg: RayConfig):
    """The reward actor of the config's reward source (restarted by Ray if its process dies)."""
    from actors.group import spawn
    from actors.reward import RewardActor

    return spawn(
        RewardActor,
        cfg,
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
        env_vars=ray_cfg.env_vars,
        max_restarts=ray_cfg.max_restarts,
    )

"""Pieces every job's driver starts with: the model path and a Ray session."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from typing import Any

from rlhf.schema import EMBEDDED_MODEL, EngineConfig, ModelConfig, RayConfig


def resolve_model_path(model: ModelConfig, progress: bool = True) -> str:
    """The directory (or hub name) to load; builds the embedded tiny model on first use."""
    if model.path != EMBEDDED_MODEL:
        return model.path
    from rlhf.task import build_tiny_model

    return str(build_tiny_model(progress=progress))


def import_object(path: str, what: str) -> Any:
    """Imports ``package.module:attribute``; errors say which setting named it."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what}: {path!r} is not an import path of the form package.module:name")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"{what}: cannot import module {module_name!r}: {error}") from error
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"{what}: module {module_name!r} has no attribute {attr!r}") from None


def load_reward_function(path: str) -> Callable[[list[str], list[str]], list[float]]:
    """A reward function ``f(prompts, responses) -> scores`` named by import path."""
    fn = import_object(path, "reward.function")
    if not callable(fn):
        raise ValueError(f"reward.function: {path!r} is not callable")
    return fn


@contextlib.contextmanager
def ray_session(cfg: RayConfig) -> Iterator[None]:
    """Joins the configured cluster, or starts a local Ray that ends with the job."""
    import ray

    if ray.is_initialized():
        yield
        return
    if cfg.address is None:
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=True)
    else:
        ray.init(address=cfg.address)
    try:
        yield
    finally:
        ray.shutdown()


def start_samplers(
    count: int,
    engine: EngineConfig,
    model: ModelConfig,
    model_path: str,
    seed: int,
    ray_cfg: RayConfig,
) -> list:
    """``count`` sampler actors, each with its own vLLM engine and seed."""
    from actors.group import spawn
    from actors.sampler import Sampler

    return [
        spawn(
            Sampler,
            engine.settings(model, model_path, seed + i),
            num_cpus=engine.num_cpus,
            num_gpus=engine.num_gpus,
            env_vars=ray_cfg.env_vars,
        )
        for i in range(count)
    ]

"""Shared, expensive fixtures: one local Ray, one embedded model, one engine of each role.

Integration tests (marked ``integration``) start the real Ray, vLLM and DeepSpeed on the
project's own tiny model; everything here is built once per test session.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Fixtures that start Ray, vLLM or DeepSpeed, or build the embedded model (minutes on a fresh
# machine). A test that uses one must be marked ``integration``, so that the fast tier
# (``make test-fast``: ``-m "not integration"``) starts none of them.
HEAVY_FIXTURES = frozenset({"ray_cluster", "reference_server", "embedded_model_path", "task_pairs"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuses to run a test that uses a heavy fixture without the ``integration`` marker."""
    unmarked = [
        f"{item.nodeid} (uses {', '.join(sorted(HEAVY_FIXTURES & set(item.fixturenames)))})"
        for item in items
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("integration") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests start Ray, vLLM or DeepSpeed (or build the embedded model) but are not "
            "marked integration; add @pytest.mark.integration:\n  " + "\n  ".join(unmarked)
        )
    # The GPU tier (tests/gpu) runs by ``make test-gpu`` (``-m gpu``) and is skipped without CUDA;
    # a test there without the marker would run in the CPU suite instead.
    off_tier = [
        item.nodeid
        for item in items
        if item.nodeid.startswith("tests/gpu/") and item.get_closest_marker("gpu") is None
    ]
    if off_tier:
        raise pytest.UsageError(
            "these tests under tests/gpu are not marked gpu; add pytestmark = pytest.mark.gpu "
            "(with tests.gpu.conftest's needs_cuda or needs_layer2 skip):\n  "
            + "\n  ".join(off_tier)
        )


@pytest.fixture(scope="session")
def embedded_model_path() -> str:
    """The embedded tiny SFT model (built once into the user's cache, then reused)."""
    from rlhf.task import build_tiny_model

    return str(build_tiny_model(progress=False))


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session (logical CPUs: actors share the real cores).

    Started as a quiet job's Ray is (``rlhf.logs.ray_init_options``): a job's actors write
    their output to its run directory's ``logs/``.
    """
    import ray

    from rlhf import logs

    ray.init(num_cpus=8, include_dashboard=False, **logs.ray_init_options(local=True))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def reference_server(ray_cluster, embedded_model_path):
    """A vLLM reference server holding the embedded model (never changed by tests)."""
    from actors.group import spawn
    from actors.reference import ReferenceServer
    from rlhf.models.vllm_engine import EngineSettings

    actor = spawn(ReferenceServer, EngineSettings(model=embedded_model_path), num_cpus=1)
    ray_cluster.get(actor.token_logprobs.remote([[1, 2]]))  # wait until the engine is up
    yield actor
    ray_cluster.kill(actor)

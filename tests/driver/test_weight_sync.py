"""The broadcast weight sync with real trainers (DeepSpeed, 2 ranks) and a real vLLM sampler."""

import pytest

from tests.driver.conftest import SEQ, train_on_one_pair, trainer_logprobs

pytestmark = pytest.mark.integration


def _gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def test_broadcast_sync_lands_twice(ray_cluster, embedded_model_path):
    """Each broadcast sync makes the sampler's log-probs the trainer's, and labels the version."""
    from actors.group import spawn
    from actors.reference import ReferenceServer
    from actors.trainer import start_policy_trainers
    from rlhf.driver.common import start_samplers
    from rlhf.driver.online import sync_weights
    from rlhf.driver.weight_sync import BroadcastSync, open_broadcast
    from rlhf.models.deepspeed_config import PreferenceTrainerConfig
    from rlhf.models.vllm_sync import StaleWeightsError
    from rlhf.schema import EngineConfig, ModelConfig, RayConfig

    trainers = start_policy_trainers(
        embedded_model_path, PreferenceTrainerConfig(num_ranks=2, lr=1e-2), "sigmoid", 0.1
    )
    (sampler,) = start_samplers(
        1,
        EngineConfig(),
        ModelConfig(path=embedded_model_path),
        embedded_model_path,
        0,
        RayConfig(),
    )
    # A moving reference on the Hugging Face backend: it receives in its actor's own process.
    settings = EngineConfig().settings(
        ModelConfig(path=embedded_model_path), embedded_model_path, 0
    )
    reference = spawn(ReferenceServer, settings, "hf")
    broadcast = BroadcastSync.open(trainers, [sampler], reference)
    try:
        assert open_broadcast(trainers) is broadcast
        for version in (1, 2):
            train_on_one_pair(ray_cluster, trainers, 3)
            trained = trainer_logprobs(ray_cluster, trainers, embedded_model_path)
            before = ray_cluster.get(sampler.token_logprobs.remote([SEQ]))[0]
            assert _gap(before, trained) > 1e-2
            nbytes = sync_weights(trainers, [sampler], reference, version=version)
            after = ray_cluster.get(sampler.token_logprobs.remote([SEQ]))[0]
            assert _gap(after, trained) < 1e-4, version
            moved = ray_cluster.get(reference.token_logprobs.remote([SEQ]))[0]
            assert _gap(moved, trained) < 1e-4, version
            assert nbytes == broadcast.manifest.nbytes > 100_000
            # The sampler holds this version now (it refuses to sample for any other).
            ray_cluster.get(
                sampler.generate.remote(["a"], 1, max_tokens=2, weights_version=version)
            )
            with pytest.raises(StaleWeightsError):
                ray_cluster.get(sampler.generate.remote(["a"], 1, weights_version=version - 1))
        assert broadcast.generation == 1  # formed once for both syncs
        # What a sync does after a receiver restarted: a new group of the same actors.
        broadcast.form()
        train_on_one_pair(ray_cluster, trainers, 1)
        trained = trainer_logprobs(ray_cluster, trainers, embedded_model_path)
        sync_weights(trainers, [sampler], reference, version=3)
        after = ray_cluster.get(sampler.token_logprobs.remote([SEQ]))[0]
        assert _gap(after, trained) < 1e-4
        assert ray_cluster.get(sampler.weight_group.remote()) == broadcast.group_id
        assert broadcast.group_id.endswith("-2")
    finally:
        broadcast.kill()
        trainers.kill()
        ray_cluster.kill(sampler)
        ray_cluster.kill(reference)
    assert open_broadcast(trainers) is None

"""The broadcast weight sync with real trainers (DeepSpeed, 2 ranks) and a real vLLM sampler;
then, on the same actors, no wait without a bound: a receiver that dies while the group forms
and a trainer rank that dies mid-step are named within the job's call timeout."""

import os
import signal
import time

import pytest

from tests.driver.conftest import SEQ, one_pair, train_on_one_pair, trainer_logprobs

pytestmark = pytest.mark.integration


def _gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


TIMEOUT_S = 20  # ray.call_timeout_s of these actors: the gloo group's and every wait's bound


def _pid(ray, actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def test_broadcast_sync_lands_twice(ray_cluster, embedded_model_path):
    """Each broadcast sync makes the sampler's log-probs the trainer's, and labels the version;
    dead actors end the next wait with an error that names them, well within the timeout."""
    from transformers import AutoModelForCausalLM

    from actors.group import spawn
    from actors.reference import ReferenceServer
    from actors.trainer import start_policy_trainers
    from rlhf.driver.common import start_samplers
    from rlhf.driver.online import sync_weights
    from rlhf.driver.preference_training import step_metrics
    from rlhf.driver.retry import ActorLostError
    from rlhf.driver.sync_probe import SyncMismatchError, SyncProbe
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
    started = [*trainers.actors, sampler, reference]  # as the loop's wait_for_roles does
    ray_cluster.get([actor.__ray_ready__.remote() for actor in started])
    broadcast = BroadcastSync.open(trainers, [sampler], reference, timeout_s=TIMEOUT_S)
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

        # The sync probe: agreement after a sync; an engine whose sync did not land (here the
        # initial weights, labelled version 4 as if the sync had) is named with its version.
        probe = SyncProbe(tolerance=1e-3, count=1, timeout_s=TIMEOUT_S, sequences=[SEQ])
        assert probe.check(trainers, [sampler], 3)["sync/logp_max_abs_diff"] < 1e-4
        initial = AutoModelForCausalLM.from_pretrained(embedded_model_path).state_dict()
        ray_cluster.get(sampler.load_weights.remote(initial, 4))
        named = r"^sync probe after round 3: sampler 0 holds weights labelled version 4, "
        with pytest.raises(SyncMismatchError, match=named):
            probe.check(trainers, [sampler], 3)
        # A receiver dies as the group forms: trainer rank 0 and the sampler wait for it in the
        # rendezvous (until TIMEOUT_S), the driver names it at once.
        os.kill(_pid(ray_cluster, reference), signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(ActorLostError, match=r"^forming the weight broadcast group: referen"):
            broadcast.form()
        assert time.monotonic() - start < TIMEOUT_S
        # A trainer rank dies mid-step: rank 0 waits for it in the gradients' all-reduce (and
        # first in the rendezvous above), the step's wait names rank 1 at once.
        pid = _pid(ray_cluster, trainers.actors[1])
        batch = one_pair()
        refs = trainers.call_sharded("train_step", batch, batch.num_prompts)
        os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(ActorLostError, match=r"^train step: trainer rank 1 \(actor "):
            step_metrics(refs, TIMEOUT_S)
        assert time.monotonic() - start < TIMEOUT_S
    finally:
        broadcast.kill()
        trainers.kill()
        ray_cluster.kill(sampler)
        ray_cluster.kill(reference)
    assert open_broadcast(trainers) is None

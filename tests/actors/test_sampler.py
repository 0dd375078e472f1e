"""The vLLM sampler: K distinct samples per prompt, reproducible from the seed."""

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sampler(ray_cluster, embedded_model_path):
    from actors.group import spawn
    from actors.sampler import Sampler
    from rlhf.models.vllm_engine import EngineSettings

    actor = spawn(Sampler, EngineSettings(model=embedded_model_path), num_cpus=1)
    yield actor
    ray_cluster.kill(actor)


def test_samples_are_seeded_per_prompt_not_shared(ray_cluster, sampler):
    from rlhf.task import make_prompts

    prompts = make_prompts(6, seed=3, split="eval")
    groups = ray_cluster.get(sampler.generate.remote(prompts, 4, 1.0, 1.0, 40, 11))
    again = ray_cluster.get(sampler.generate.remote(prompts, 4, 1.0, 1.0, 40, 11))
    texts = [[c.text for c in g] for g in groups]
    assert texts == [[c.text for c in g] for g in again]  # same seed, same samples
    # vLLM seeds a request's n samples seed, seed+1, ...: prompts' seeds must be n apart, or
    # prompt i's sample j would be drawn with prompt i+1's sample j-1 random stream.
    shifted = sum(texts[i][j] == texts[i + 1][j - 1] for i in range(5) for j in range(1, 4))
    assert shifted <= 2, texts
    assert all(len(set(t)) >= 3 for t in texts)
    assert all(g[0].prompt_ids[0] == 1 and g[0].logprob < 0 for g in groups)


def test_sampler_refuses_to_sample_weights_older_than_the_driver_expects(
    ray_cluster, sampler, embedded_model_path
):
    """A restarted sampler is back at version 0; asked for version 1, it raises, not samples."""
    from transformers import AutoModelForCausalLM

    from rlhf.models.vllm_sync import StaleWeightsError

    prompts = ["the film was"]
    ray_cluster.get(sampler.generate.remote(prompts, 2, max_tokens=4, weights_version=0))
    with pytest.raises(StaleWeightsError, match="holds weights version 0, the driver expected 1"):
        ray_cluster.get(sampler.generate.remote(prompts, 2, max_tokens=4, weights_version=1))
    weights = AutoModelForCausalLM.from_pretrained(embedded_model_path).state_dict()
    ray_cluster.get(sampler.load_weights.remote(weights, 1))  # the same weights, labelled 1
    groups = ray_cluster.get(sampler.generate.remote(prompts, 2, max_tokens=4, weights_version=1))
    assert len(groups[0]) == 2
    ray_cluster.get(sampler.load_weights.remote(weights, 0))


def test_min_tokens_equal_to_max_tokens_gives_every_response_that_length(ray_cluster, sampler):
    """``samplers.sampling.min_tokens``: vLLM holds back the end of sequence until then."""
    from rlhf.task import make_prompts

    prompts = make_prompts(8, seed=5, split="eval")
    free = ray_cluster.get(sampler.generate.remote(prompts, 4, max_tokens=24, seed=2))
    fixed = ray_cluster.get(
        sampler.generate.remote(prompts, 4, max_tokens=24, seed=2, min_tokens=24)
    )
    free_lengths = [len(c.token_ids) for g in free for c in g]
    assert min(free_lengths) < 24, free_lengths  # the embedded model ends responses by itself
    assert {len(c.token_ids) for g in fixed for c in g} == {24}
    assert not any(c.finished for g in fixed for c in g)  # stopped by max_tokens, not EOS

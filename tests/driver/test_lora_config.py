"""What serves the reference and how weights travel when the policy trains a LoRA adapter:
the settings' defaults and the errors of combinations that cannot work (no Ray, no engine)."""

import pytest

from rlhf.config import ConfigError, from_dict


def online(**sections):
    from rlhf.driver.online_dpo import OnlineDPOConfig

    return from_dict(OnlineDPOConfig, {"model": {"path": "embedded"}, **sections})


def offline(**sections):
    from rlhf.driver.dpo import DPOConfig

    data = {"model": {"path": "embedded"}, "data": {"path": "pairs.parquet"}}
    return from_dict(DPOConfig, {**data, **sections})


LORA = {"lora": {"r": 8}}


def test_an_online_lora_job_takes_its_reference_from_the_samplers_by_default():
    from rlhf.driver.setup import online_roles
    from rlhf.schema import adapter_sync, reference_backend

    cfg = online(trainer=LORA)
    assert adapter_sync(cfg) and reference_backend(cfg) == "base"
    assert "reference" not in [role.name for role in online_roles(cfg)]
    full = online()
    assert not adapter_sync(full) and reference_backend(full) == "vllm"
    assert "reference" in [role.name for role in online_roles(full)]


def test_an_explicit_backend_or_merged_sync_keeps_a_reference_server():
    from rlhf.schema import adapter_sync, reference_backend

    assert reference_backend(online(trainer=LORA, reference={"backend": "hf"})) == "hf"
    merged = online(trainer=LORA, samplers={"lora_sync": "merged"})
    assert not adapter_sync(merged) and reference_backend(merged) == "vllm"
    # Offline DPO has no samplers: its reference stays the vLLM server, LoRA or not.
    assert reference_backend(offline(trainer=LORA)) == "vllm"


@pytest.mark.parametrize(
    ("make", "sections", "reason"),
    [
        (online, {}, "trainer.lora.r is 0"),
        (online, {"trainer": LORA, "samplers": {"lora_sync": "merged"}}, "lora_sync is merged"),
        (offline, {"trainer": LORA}, "no samplers"),
    ],
)
def test_a_base_reference_the_samplers_cannot_serve_is_a_config_error(make, sections, reason):
    with pytest.raises(ConfigError, match=f"reference.backend: base .* but .*{reason}"):
        make(reference={"backend": "base"}, **sections)


def test_vllm_serves_an_adapter_rank_with_the_next_lora_rank_it_sizes_for():
    from rlhf.models.vllm_engine import served_lora_rank

    assert [served_lora_rank(r) for r in (1, 2, 8, 9, 64, 500)] == [1, 8, 8, 16, 64, 512]
    with pytest.raises(ValueError, match="up to 512; trainer.lora.r is 600"):
        served_lora_rank(600)


class _Method:
    def __init__(self, calls, sampler, name):
        self.calls, self.sampler, self.name = calls, sampler, name

    def remote(self, *args, **kwargs):
        self.calls.append((self.sampler, self.name, args, kwargs))
        return len(self.calls)


class _Sampler:
    def __init__(self, calls, index):
        self.token_logprobs = _Method(calls, index, "token_logprobs")
        self.response_logps = _Method(calls, index, "response_logps")


def test_the_samplers_reference_spreads_chunks_and_scores_without_the_adapter_until_it_moves():
    from rlhf.driver.reference import SamplersReference, moving_reference, reference_server

    calls = []
    reference = SamplersReference([_Sampler(calls, 0), _Sampler(calls, 1)])
    reference.token_logprobs.remote([[1, 2]])
    reference.response_logps.remote([[1]], [[2]])
    reference.token_logprobs.remote([[3, 4]])
    assert calls == [
        (0, "token_logprobs", ([[1, 2]],), {"adapter": False}),
        (1, "response_logps", ([[1]], [[2]]), {"adapter": False}),
        (0, "token_logprobs", ([[3, 4]],), {"adapter": False}),
    ]
    assert reference_server(reference) is None  # no actor to wait for or sync
    assert moving_reference(reference) is None  # previous_round: the samplers' adapter
    reference.token_logprobs.remote([[5, 6]])
    assert calls[-1] == (1, "token_logprobs", ([[5, 6]],), {"adapter": True})
    server = object()
    assert reference_server(server) is server and moving_reference(server) is server

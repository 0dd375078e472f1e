"""Colocation groups: merged bundles, the fit check counting a group once, config errors."""

from __future__ import annotations

import pytest

from rlhf.cluster.colocation import check_groups, colocate_roles, merged_bundles
from rlhf.cluster.resources import Node, Role, check_fit, engine_roles
from rlhf.config import ConfigError, from_dict
from rlhf.driver.online_dpo import OnlineDPOConfig
from rlhf.driver.ppo import PPOConfig
from rlhf.schema import EngineConfig

TRAINER = Role("trainer", 2, {"CPU": 1.0, "GPU": 0.5}, "rank", "PACK")
REFERENCE = Role("reference", 1, {"CPU": 1.0, "GPU": 0.5}, "engine")
SAMPLERS = Role("samplers", 2, {"CPU": 2.0, "GPU": 0.5, "node_b": 1.0}, "engine")
CRITIC = Role("critic", 2, {"CPU": 1.0, "GPU": 0.5}, "rank", "PACK")
# One node of 4 CPUs and 2 GPUs.
GPU_NODE = [Node("cccccccc3333", "10.0.0.3", {"CPU": 4.0, "GPU": 2.0})]


def test_bundle_i_sums_rank_i_of_each_role():
    assert merged_bundles([TRAINER, REFERENCE]) == [
        {"CPU": 2.0, "GPU": 1.0},  # trainer rank 0 + the reference
        {"CPU": 1.0, "GPU": 0.5},  # trainer rank 1 alone
    ]


def test_the_fit_check_counts_a_group_once_with_its_largest_bundle():
    (group,) = colocate_roles([TRAINER, REFERENCE], [["trainer", "reference"]])
    assert group == Role("trainer+reference", 2, {"CPU": 2.0, "GPU": 1.0}, "bundle", "PACK")
    # Apart: trainer 1 GPU + reference 0.5 = 1.5 of 2 GPUs, 3 of 4 CPUs; the group: 2 bundles of
    # 2 CPU and 1 GPU (the largest, on the safe side for bundle 1), 4 CPU and 2 GPU: fits.
    assert check_fit([group], GPU_NODE) == []
    # A third role beside the group is checked together with it: 4 + 1 CPUs > 4.
    reward = Role("reward", 1, {"CPU": 1.0})
    stage = colocate_roles([TRAINER, REFERENCE, reward], [["trainer", "reference"]])
    assert check_fit(stage, GPU_NODE) == [
        "reward and trainer+reference together need 5 CPU (reward 1, trainer+reference 4), "
        "the cluster has 4"
    ]


def test_a_bundle_with_more_than_one_gpu_names_the_roles():
    whole = Role("trainer", 1, {"CPU": 1.0, "GPU": 1.0}, "rank", "PACK")
    with pytest.raises(ConfigError) as error:
        check_groups([["trainer", "reference"]], [whole, REFERENCE])
    assert str(error.value) == (
        "ray.colocate[0]: bundle 0 would hold 1.5 GPU (trainer 1 + reference 0.5); colocated "
        "roles share one GPU, so their num_gpus must sum to at most 1 (e.g. 0.5 each)"
    )


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([["trainer", "judge"]], "ray.colocate[0]: 'judge' is not a role this job runs"),
        (
            [["trainer", "reference"], ["reference", "samplers"]],
            "ray.colocate[1]: 'reference' is already in ray.colocate[0]",
        ),
        ([["trainer"]], "ray.colocate[0] is ['trainer']: a colocation group needs at least two"),
    ],
)
def test_bad_groups_name_the_group_and_the_role(groups, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_groups(groups, [TRAINER, REFERENCE, SAMPLERS])


def test_tensor_parallel_engines_and_mixed_strategies_are_rejected():
    tp = engine_roles("samplers", EngineConfig(tensor_parallel_size=2))
    with pytest.raises(ConfigError, match="'samplers' has tensor_parallel_size > 1"):
        check_groups([["trainer", "samplers"]], [TRAINER, *tp])
    spread = Role("critic", 2, {"CPU": 1.0}, "rank", "SPREAD")
    with pytest.raises(ConfigError, match=r"different placement strategies \(trainer PACK, critic"):
        check_groups([["trainer", "critic"]], [TRAINER, spread])


def _online(**sections) -> OnlineDPOConfig:
    return from_dict(OnlineDPOConfig, sections)


def test_online_config_checks_colocation_names_at_load_time():
    ok = _online(ray={"colocate": [["trainer", "reference"], ["samplers", "reward"]]})
    assert ok.ray.colocate == [["trainer", "reference"], ["samplers", "reward"]]
    with pytest.raises(ConfigError, match="'critic' is not a role this job runs"):
        _online(ray={"colocate": [["trainer", "critic"]]})  # online DPO has no critic


def test_ppo_knows_its_critic_only_when_the_estimator_needs_one():
    colocate = {"colocate": [["critic", "samplers"]]}
    assert from_dict(PPOConfig, {"ray": colocate}).ray.colocate == [["critic", "samplers"]]
    with pytest.raises(ConfigError, match="'critic' is not a role"):
        from_dict(PPOConfig, {"ray": colocate, "ppo": {"advantage": "grpo"}})


def test_sleep_when_idle_is_rejected_on_cpu_and_outside_a_trainer_group():
    sleepy = {"engine": {"sleep_when_idle": True}}
    colocate = {"colocate": [["trainer", "samplers"]]}
    with pytest.raises(ConfigError, match="samplers.engine.sleep_when_idle: vLLM's CPU build has"):
        _online(samplers=sleepy, ray=colocate)
    gpu = {"num_gpus_per_rank": 0.5}
    with pytest.raises(ConfigError, match="reference is in no ray.colocate group with trainer"):
        _online(device="cuda", trainer=gpu, reference=sleepy, ray=colocate)
    with pytest.raises(ConfigError, match="needs reference.backend: vllm"):
        _online(device="cuda", reference={"backend": "hf", **sleepy}, ray=colocate)
    cuda = _online(device="cuda", trainer=gpu, samplers=sleepy, ray=colocate)
    assert cuda.samplers.engine.settings(cuda.model, "m", 0).enable_sleep_mode


def test_jobs_without_colocatable_roles_at_once_reject_colocate_before_ray_starts():
    from rlhf.driver.common import ray_session
    from rlhf.schema import RayConfig

    cfg = RayConfig(colocate=[["trainer", "reference"]])
    with pytest.raises(ConfigError, match="starts no roles that could share"), ray_session(cfg):
        pass  # rlhf sample / make-data
    # Offline DPO frees the reference before its trainers start: no stage holds both.
    offline = ([REFERENCE], [TRAINER])
    message = "'trainer' is not a role this job runs at the same"
    with pytest.raises(ConfigError, match=message), ray_session(cfg, *offline):
        pass

"""Does a config fit the cluster? Expected messages worked out by hand from small clusters."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf.cluster.resources import (
    ClusterFitError,
    Node,
    Role,
    check_fit,
    engine_roles,
    nodes_from_ray,
    trainer_role,
)
from rlhf.config import ConfigError, from_dict, load_config
from rlhf.models.deepspeed_config import TrainerConfig
from rlhf.schema import EngineConfig, RayConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# Two nodes of 4 CPUs, no GPU; the second one tagged node_b (as `ray start --resources`).
HEAD = Node("aaaaaaaa1111", "10.0.0.1", {"CPU": 4.0, "memory": 8e9, "node:10.0.0.1": 1.0})
NODE_B = Node("bbbbbbbb2222", "10.0.0.2", {"CPU": 4.0, "node_b": 2.0})
CLUSTER = [HEAD, NODE_B]


def test_a_job_that_fits_has_no_problems():
    stage = [
        Role("trainer", 2, {"CPU": 1.0}, "rank", "PACK"),
        Role("samplers", 2, {"CPU": 1.0, "node_b": 1.0}, "engine"),
        Role("reference", 1, {"CPU": 1.0}, "engine"),
        Role("reward", 1, {"CPU": 0.5}),
    ]
    assert check_fit(stage, CLUSTER) == []


def test_gpus_the_cluster_lacks_are_named_with_the_arithmetic():
    trainer = trainer_role("trainer", TrainerConfig(num_ranks=2, num_gpus_per_rank=1.0))
    assert check_fit([trainer], CLUSTER) == [
        "trainer: 2 ranks x 1 GPU need 2 GPU, the cluster has 0"
    ]


def test_a_custom_resource_no_node_has_is_named_with_the_ones_that_exist():
    (problem,) = check_fit([Role("samplers", 1, {"CPU": 1.0, "node_c": 1.0}, "engine")], CLUSTER)
    assert problem.startswith(
        "samplers: no node has the resource 'node_c' (the nodes have: CPU, node_b; "
    )
    assert "ray start --resources" in problem


def test_pinned_actors_beyond_the_resource_count():
    # node_b: 2 units in the cluster; 3 engines asking for 1 each need 3.
    stage = [Role("samplers", 3, {"CPU": 1.0, "node_b": 1.0}, "engine")]
    assert check_fit(stage, CLUSTER) == [
        "samplers: 3 engines x 1 node_b need 3 node_b, the cluster has 2"
    ]


def test_an_actor_larger_than_any_node():
    # 6 CPUs in total would do, but one rank cannot span two nodes of 4.
    (problem,) = check_fit([Role("trainer", 1, {"CPU": 6.0}, "rank", "PACK")], CLUSTER)
    assert problem == (
        "trainer: one rank needs 6 CPU on a single node, and no node has that much "
        "(10.0.0.1 (aaaaaaaa): 4 CPU, 10.0.0.2 (bbbbbbbb): 4 CPU)"
    )


def test_bundles_that_fit_in_total_but_not_per_node():
    # 3 x 2.5 = 7.5 <= 8 CPUs, but a 4-CPU node holds one 2.5-CPU rank: 2 of 3 fit.
    stage = [Role("trainer", 3, {"CPU": 2.5}, "rank", "SPREAD")]
    assert check_fit(stage, CLUSTER) == [
        "trainer: the nodes hold only 2 of the 3 ranks of 2.5 CPU (one rank never spans nodes)"
    ]


def test_strict_spread_needs_a_node_per_rank():
    assert check_fit([Role("trainer", 2, {"CPU": 1.0}, "rank", "STRICT_SPREAD")], CLUSTER) == []
    assert check_fit([Role("trainer", 3, {"CPU": 1.0}, "rank", "STRICT_SPREAD")], CLUSTER) == [
        "trainer: STRICT_SPREAD puts each of the 3 ranks on its own node; "
        "2 node(s) can hold one of 1 CPU"
    ]
    assert check_fit([Role("trainer", 3, {"CPU": 1.0}, "rank", "SPREAD")], CLUSTER) == []


def test_strict_pack_needs_one_node_for_all_ranks():
    assert check_fit([Role("trainer", 4, {"CPU": 1.0}, "rank", "STRICT_PACK")], CLUSTER) == []
    assert check_fit([Role("trainer", 2, {"CPU": 3.0}, "rank", "STRICT_PACK")], CLUSTER) == [
        "trainer: STRICT_PACK puts all 2 ranks of 3 CPU on one node; the largest holds 1"
    ]


def test_roles_that_fit_alone_but_not_together():
    # trainer 2 x 2 + samplers 2 x 2 + reference 1 = 9 CPUs of 8.
    stage = [
        Role("trainer", 2, {"CPU": 2.0}, "rank", "PACK"),
        Role("samplers", 2, {"CPU": 2.0}, "engine"),
        Role("reference", 1, {"CPU": 1.0}, "engine"),
    ]
    assert check_fit(stage, CLUSTER) == [
        "trainer, samplers and reference together need 9 CPU "
        "(trainer 4, samplers 4, reference 1), the cluster has 8"
    ]


def test_tensor_parallel_engines_count_one_gpu_per_worker():
    engine = EngineConfig(tensor_parallel_size=2, num_gpus=0.0)
    roles = engine_roles("samplers", engine, count=2)
    assert [(r.name, r.count, r.bundle) for r in roles] == [
        ("samplers", 2, {"CPU": 1.0}),
        ("samplers tensor-parallel workers", 4, {"GPU": 1.0}),
    ]
    gpu_node = Node("cccccccc", "10.0.0.3", {"CPU": 8.0, "GPU": 2.0})
    assert check_fit(roles, [gpu_node]) == [
        "samplers tensor-parallel workers: 4 workers x 1 GPU need 4 GPU, the cluster has 2"
    ]


def test_nodes_from_ray_keeps_live_nodes_and_their_totals():
    entries = [
        {"NodeID": "a1", "Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 4}},
        {
            "NodeID": "d2",
            "Alive": False,
            "NodeManagerAddress": "10.0.0.9",
            "Resources": {"CPU": 64},
        },
    ]
    assert nodes_from_ray(entries) == [Node("a1", "10.0.0.1", {"CPU": 4})]


def test_config_sections_take_custom_resources_and_reject_reserved_names():
    trainer = from_dict(
        TrainerConfig, {"resources_per_rank": {"node_b": 0.01}, "placement_strategy": "SPREAD"}
    )
    assert trainer_role("trainer", trainer).bundle == {"CPU": 1.0, "node_b": 0.01}
    assert trainer_role("trainer", trainer).strategy == "SPREAD"
    with pytest.raises(ConfigError, match="resources_per_rank: 'GPU' is set by num_cpus"):
        from_dict(TrainerConfig, {"resources_per_rank": {"GPU": 1}})
    with pytest.raises(ConfigError, match="placement_strategy: 'SPREAD_OUT' is not one of"):
        from_dict(TrainerConfig, {"placement_strategy": "SPREAD_OUT"})
    with pytest.raises(ConfigError, match=r"resources\.node_b must be > 0"):
        from_dict(EngineConfig, {"resources": {"node_b": 0}})
    with pytest.raises(ConfigError, match="set num_gpus: 0"):
        from_dict(EngineConfig, {"tensor_parallel_size": 2, "num_gpus": 1})


@pytest.mark.parametrize("name", ["demo.yaml", "online_dpo.yaml", "dpo.yaml"])
def test_shipped_configs_fit_the_local_ray_they_start(name):
    """Every job's preset fits one node of ``ray.num_cpus`` logical CPUs (a laptop's Ray)."""
    import yaml

    from rlhf.driver.dpo import DPOConfig
    from rlhf.driver.online_dpo import OnlineDPOConfig
    from rlhf.driver.setup import offline_stages, online_roles

    algorithm = yaml.safe_load((CONFIGS / name).read_text())["algorithm"]
    if algorithm == "online_dpo":
        cfg = load_config(OnlineDPOConfig, str(CONFIGS / name), [])
        stages = [online_roles(cfg)]
        assert [r.name for r in stages[0]] == ["trainer", "samplers", "reference", "reward"]
    else:
        cfg = load_config(DPOConfig, str(CONFIGS / name), ["data.path=unused.parquet"])
        stages = list(offline_stages(cfg))
    laptop = [Node("local", "127.0.0.1", {"CPU": float(cfg.ray.num_cpus)})]
    assert [check_fit(stage, laptop) for stage in stages] == [[]] * len(stages)


@pytest.mark.integration
def test_ray_session_rejects_before_any_actor_starts(ray_cluster):
    """The check reads the real ``ray.nodes()`` (the session's local Ray has no GPU)."""
    from rlhf.driver.common import ray_session

    free_before = ray_cluster.available_resources().get("CPU")
    trainer = trainer_role("trainer", TrainerConfig(num_ranks=2, num_gpus_per_rank=1.0))
    with pytest.raises(ClusterFitError) as error, ray_session(RayConfig(), [trainer]):
        pytest.fail("the block must not run")
    assert "trainer: 2 ranks x 1 GPU need 2 GPU, the cluster has 0" in str(error.value)
    assert "the config does not fit the Ray cluster (1 node: 8 CPU" in str(error.value)
    assert ray_cluster.available_resources().get("CPU") == free_before
    with ray_session(RayConfig(check_resources=False), [trainer]):
        pass  # an autoscaling cluster's nodes appear on demand: the check can be turned off

"""GPU placement and GPU configs, checked on a CPU machine: Ray's GPUs are logical resources.

A Ray of its own with ``num_gpus=2`` (nothing but a count here) places the trainer ranks of an
``ActorGroup`` in GPU bundles, one GPU each, and colocated roles of a ``SharedPlacement`` on the
same GPU; ``device: cuda`` configs load or are refused naming the key. What runs on the GPUs
is the GPU tier's (tests/gpu, ``make test-gpu``).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from rlhf.config import ConfigError, from_dict

# Runs in a fresh interpreter: its own local Ray with 2 logical GPUs (never the session's).
_PLACEMENT = """
import ray
from actors.group import ActorGroup, SharedPlacement

class Probe:
    def __init__(self, rank, world_size, rendezvous):
        self.rank = rank
    def gpus(self):
        import os
        return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")

ray.init(num_cpus=4, num_gpus=2, include_dashboard=False)
trainers = ActorGroup(Probe, 2, num_cpus_per_rank=0.5, num_gpus_per_rank=1)
ids = ray.get(trainers.call("gpus"))
assert sorted(g[0] for g, _ in ids) == [0, 1] and all(len(g) == 1 for g, _ in ids), ids
assert all(visible == str(g[0]) for g, visible in ids), ids
bundles = ray.util.placement_group_table(trainers.placement_group)["bundles"]
assert all(b.get("GPU") == 1.0 for b in bundles.values()), bundles
trainers.kill()

shared = SharedPlacement([{"CPU": 1, "GPU": 1}, {"CPU": 1, "GPU": 1}], "PACK", "colocated")
trainer = ActorGroup(Probe, 2, num_cpus_per_rank=0.5, num_gpus_per_rank=0.5, shared=shared)
sampler = ActorGroup(Probe, 2, num_cpus_per_rank=0.5, num_gpus_per_rank=0.5, shared=shared)
a, b = ray.get(trainer.call("gpus")), ray.get(sampler.call("gpus"))
assert [g for g, _ in a] == [g for g, _ in b], (a, b)  # rank i of both roles: one GPU
assert sorted(g[0] for g, _ in a) == [0, 1], a
print("placed", a)
"""


@pytest.mark.integration
def test_ranks_get_a_gpu_bundle_each_and_colocated_roles_share_one() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PLACEMENT], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "placed" in result.stdout


def _online(**sections):
    from rlhf.driver.online_dpo import OnlineDPOConfig

    return from_dict(OnlineDPOConfig, sections)


def test_cuda_job_configs_load_and_bad_ones_name_the_key() -> None:
    sleepy = {"num_gpus": 0.3, "sleep_when_idle": True}
    cfg = _online(
        device="cuda",
        trainer={"num_gpus_per_rank": 0.4, "zero_stage": 3},
        samplers={"engine": sleepy},
        reference={"engine": sleepy},
        ray={"colocate": [["trainer", "samplers", "reference"]]},
    )
    assert cfg.device == "cuda" and cfg.samplers.engine.sleep_when_idle
    with pytest.raises(ConfigError, match="num_gpus_per_rank"):
        _online(device="cuda", trainer={"num_gpus_per_rank": 0})
    with pytest.raises(ConfigError, match="sleep_when_idle"):
        _online(samplers={"engine": {"sleep_when_idle": True}})  # device: cpu

"""Colocation on a real local Ray: trainer ranks and the reference server in one placement group."""

from __future__ import annotations

import pytest

from actors.group import placement_here
from rlhf.config import from_dict
from rlhf.driver.common import ActorScope
from rlhf.driver.online_dpo import OnlineDPOConfig
from rlhf.driver.setup import online_roles, place_colocated, start_reference, start_trainers


@pytest.mark.integration
def test_trainer_ranks_and_reference_share_one_placement_group(ray_cluster, tiny_llama_path):
    cfg = from_dict(
        OnlineDPOConfig,
        {
            "model": {"path": str(tiny_llama_path)},
            "trainer": {"num_ranks": 2, "zero_stage": 0},
            "reference": {"backend": "hf"},  # starts in seconds; the vLLM one is placed alike
            "ray": {"colocate": [["trainer", "reference"]]},
        },
    )
    scope = ActorScope()
    try:
        placements = place_colocated(cfg, online_roles(cfg), scope)
        shared = placements["trainer"]
        assert placements["reference"] is shared
        table = ray_cluster.util.placement_group_table(shared.group)
        # Bundle 0 holds trainer rank 0 and the reference (1 CPU each), bundle 1 rank 1 alone.
        assert [table["bundles"][i] for i in (0, 1)] == [{"CPU": 2.0}, {"CPU": 1.0}]

        reference = scope.own(start_reference(cfg, str(tiny_llama_path), shared))
        trainers = scope.own(start_trainers(cfg, str(tiny_llama_path), shared))
        ranks = ray_cluster.get(
            [a.__ray_call__.remote(lambda _: placement_here()) for a in trainers.actors]
        )
        ref = ray_cluster.get(reference.__ray_call__.remote(lambda _: placement_here()))
        group_id = shared.group.id.hex()
        assert ranks == [(group_id, 0), (group_id, 1)]
        assert ref == (group_id, 0)
        assert trainers.placement_group is shared.group and not trainers.owns_placement
        # Both really work where they were put: a reference score, a trainer answer.
        assert len(ray_cluster.get(reference.token_logprobs.remote([[1, 2, 3]]))[0]) == 2
        assert len(set(ray_cluster.get(trainers.call("node_id")))) == 1
    finally:
        scope.close()
    assert ray_cluster.util.placement_group_table(shared.group)["state"] == "REMOVED"

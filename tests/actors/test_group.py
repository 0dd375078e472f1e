"""ActorGroup on a real local Ray: placement, rendezvous address, calls and sharded calls."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from rlhf.data.batch import PreferenceBatch

# The stand-in roles below run in workers that import this module: it imports no torch (3 CPU-s
# per actor start on these machines; actors.group imports it too), only the tests do.


class _Rank:
    """A stand-in role: records how it was started and echoes what it receives."""

    def __init__(self, rank: int, world_size: int, rendezvous, tag: str) -> None:
        self.started = (rank, world_size, rendezvous, tag)

    def started_with(self) -> tuple:
        return self.started

    def rows(self, batch: PreferenceBatch) -> tuple[list[int], int]:
        return batch.input_ids[:, 0].tolist(), batch.input_ids.untyped_storage().nbytes()


@pytest.mark.integration
def test_group_starts_ranks_with_rank0_address_and_shards(ray_cluster) -> None:
    import torch

    from actors.group import ActorGroup
    from rlhf.data.batch import PreferenceBatch

    group = ActorGroup(_Rank, 3, args=("policy",), num_cpus_per_rank=0.5)
    try:
        started = ray_cluster.get(group.call("started_with"))
        assert [s[0] for s in started] == [0, 1, 2]
        assert {s[1:] for s in started} == {(3, group.rendezvous, "policy")}
        assert group.rendezvous.host == ray_cluster.util.get_node_ip_address()
        assert 1024 <= group.rendezvous.port < 65536
        assert len(group.rendezvous.secret) == 32  # 128 bits, hex
        assert group.rendezvous.secret not in repr(group.rendezvous)

        # 5 prompts x 2 responses: shards of 2, 2 and 1 prompts, whole groups per rank.
        ids = torch.arange(10).unsqueeze(1).repeat(1, 3)
        ones = torch.ones_like(ids)
        batch = PreferenceBatch(ids, ones, ones, None, num_responses=2)
        rows, nbytes = zip(*ray_cluster.get(group.call_sharded("rows", batch)), strict=True)
        assert list(rows) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
        assert list(nbytes) == [4 * 3 * 8, 4 * 3 * 8, 2 * 3 * 8]  # each rank got its rows only
    finally:
        group.kill()


@pytest.mark.integration
def test_rank0_address_is_found_on_the_node_of_bundle_0(ray_cluster, monkeypatch) -> None:
    """Bundle 0 on this node: the address is found here, no task; on another node (Ray's table
    patched to say so): by a task placed in bundle 0, which finds that node's address."""
    from ray.util.placement_group import remove_placement_group

    from actors import group as group_module

    found_here = []
    free_address = group_module._free_address
    monkeypatch.setattr(
        group_module, "_free_address", lambda: found_here.append(1) or free_address()
    )
    placement = group_module._place([{"CPU": 0.1}], "PACK", 60.0, "one bundle")
    try:
        host, port = group_module._rank0_address(placement)
        assert found_here == [1]
        assert host == ray_cluster.util.get_node_ip_address() and 1024 <= port < 65536

        elsewhere = {"bundles_to_node_id": {0: "another node"}}
        monkeypatch.setattr(ray_cluster.util, "placement_group_table", lambda group: elsewhere)
        host, port = group_module._rank0_address(placement)
        assert found_here == [1]  # it ran in a worker (on a copy of the list)
        assert host == ray_cluster.util.get_node_ip_address() and 1024 <= port < 65536
    finally:
        remove_placement_group(placement)


@pytest.mark.integration
def test_group_that_cannot_be_placed_says_why(ray_cluster) -> None:
    from actors.group import ActorGroup

    with pytest.raises(RuntimeError, match="could not be placed"):
        ActorGroup(_Rank, 2, args=("x",), num_cpus_per_rank=100, timeout_s=2)


@pytest.mark.integration
def test_spawn_still_starts_one_actor(ray_cluster) -> None:
    from actors.group import spawn

    actor = spawn(_Rank, 0, 1, None, "solo", num_cpus=0.5)
    assert ray_cluster.get(actor.started_with.remote()) == (0, 1, None, "solo")
    ray_cluster.kill(actor)


class _SlowStart:
    """A role whose constructor takes ``seconds`` (a model load, an op build)."""

    def __init__(self, seconds: float) -> None:
        import time

        time.sleep(seconds)


class _FailedStart:
    def __init__(self) -> None:
        raise ValueError("no such model")


@pytest.mark.integration
def test_wait_started_names_the_actors_still_starting(ray_cluster) -> None:
    from actors.group import ActorStartError, spawn, wait_started

    quick = spawn(_SlowStart, 0.0, num_cpus=0.1)
    slow = [spawn(_SlowStart, s, num_cpus=0.1) for s in (0.0, 60.0)]
    try:
        wait_started({"reference": quick}, timeout_s=60)
        with pytest.raises(ActorStartError) as error:
            wait_started({"reference": quick, "samplers": slow}, timeout_s=3, hint="; a hint")
        assert str(error.value).startswith(
            "samplers 1 did not finish starting within 3 s (ray.start_timeout_s): a start loads "
            "the model (and a trainer builds DeepSpeed's ops); a hint."
        )
        failed = spawn(_FailedStart, num_cpus=0.1)
        with pytest.raises(Exception, match="no such model"):
            wait_started({"reward": failed}, timeout_s=60)
    finally:
        for actor in [quick, *slow]:
            ray_cluster.kill(actor)

"""A local run listens on loopback only: Ray's processes and ours (the trainer ranks' process
group, the weight broadcast)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

# Runs in a fresh process: ray_session starts the local Ray itself only when none is running.
# Two ranks started as a training role's are (an ActorGroup) form their process group as every
# trainer rank does (actors.deepspeed_rank.join_ranks, which DeepSpeedModel calls before
# DeepSpeed adopts the group) and run a collective: rank 0's store and both ranks' gloo pairs
# listen while the listeners are read. Rank 0 also opens the weight broadcast's store, as trainer
# rank 0 does in a job. (Real DeepSpeed ranks on the tiny Llama listened the same when this was
# written, at about a minute more of the suite.)
SCRIPT = """
import json
import psutil, ray
from actors.group import ActorGroup
from rlhf.driver.common import ray_session
from rlhf.schema import RayConfig

class Rank:
    def __init__(self, rank, world_size, rendezvous):
        import torch
        import torch.distributed as dist
        from actors.deepspeed_rank import join_ranks

        join_ranks(rank, world_size, rendezvous, "gloo")
        self.total = torch.tensor([rank + 1.0])
        dist.all_reduce(self.total)

    def sum(self):
        return float(self.total)

    def open(self):
        from rlhf.models.weight_broadcast import WeightSender
        self.sender = WeightSender("gloo")
        return [self.sender.host, self.sender.port]

with ray_session(RayConfig(num_cpus=3)):
    ranks = ActorGroup(Rank, 2, num_cpus_per_rank=1)
    sums = ray.get(ranks.call("sum"))
    sender = ray.get(ranks.actors[0].open.remote())
    tree = [psutil.Process(), *psutil.Process().children(recursive=True)]
    listening = []
    for process in tree:
        try:
            connections = process.net_connections("inet")
        except psutil.Error:
            continue
        listening += [
            [c.laddr.ip, c.laddr.port, process.name()]
            for c in connections
            if c.status == psutil.CONN_LISTEN
        ]
    ranks.kill()
rendezvous = [ranks.rendezvous.host, ranks.rendezvous.port]
print(json.dumps({"sender": sender, "ranks": rendezvous, "sums": sums, "listening": listening}))
"""

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def test_a_local_run_listens_on_loopback_only():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["sums"] == [3.0, 3.0]  # 1 + 2: the group formed
    listening = found["listening"]
    for ours in ("sender", "ranks"):  # the weight broadcast's store, the trainer ranks' store
        host, port = found[ours]
        assert host == "127.0.0.1"
        assert [ip for ip, listened, _ in listening if listened == port] == ["127.0.0.1"], ours
    assert len([name for *_, name in listening if name == "ray::Rank"]) >= 4  # Ray's, ours
    assert [entry for entry in listening if entry[0] not in LOOPBACK] == []

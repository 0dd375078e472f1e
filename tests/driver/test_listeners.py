"""A local run listens on loopback only: Ray's processes and ours (the weight broadcast)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

# Runs in a fresh process: ray_session starts the local Ray itself only when none is running.
SCRIPT = """
import json, os
import psutil, ray
from rlhf.driver.common import ray_session
from rlhf.schema import RayConfig

@ray.remote(num_cpus=0)
class Host:
    def open(self):
        from rlhf.models.weight_broadcast import WeightSender
        self.sender = WeightSender("gloo")
        return [self.sender.host, self.sender.port]

with ray_session(RayConfig(num_cpus=2)):
    host = Host.remote()
    sender = ray.get(host.open.remote())
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
print(json.dumps({"sender": sender, "listening": listening}))
"""

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def test_a_local_run_listens_on_loopback_only():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    host, port = found["sender"]
    assert host == "127.0.0.1"
    listening = found["listening"]
    assert [ip for ip, listened, _ in listening if listened == port] == ["127.0.0.1"]
    assert len(listening) > 5  # Ray's GCS, raylet, object manager, workers... and ours
    assert [entry for entry in listening if entry[0] not in LOOPBACK] == []

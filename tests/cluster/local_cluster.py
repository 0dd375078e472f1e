"""A real multi-node Ray cluster on this one machine, for tests: each node its own raylet.

Every node is a ``ray start --block`` process this test owns, with its own temp dir and free
ports, so it neither joins nor disturbs another Ray on the machine (``ray_current_cluster`` is
written into our temp dir, not /tmp/ray). Shutdown terminates exactly these processes (SIGTERM
makes ``ray start --block`` stop its node's processes), then kills their process groups if
they linger. The dashboard, which serves the Jobs API, listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rlhf.cluster import jobs

BIN = Path(sys.executable).parent  # ray and rlhf of this environment


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalCluster:
    """A head node (with the dashboard / Jobs API) and worker nodes, started one by one.

    Args:
        env: extra environment of every node's processes (and so of jobs and actors).
    """

    def __init__(self, env: dict[str, str] | None = None) -> None:
        # Short: Ray's socket paths under it must stay within the 107-byte limit of AF_UNIX.
        self.root = Path(tempfile.mkdtemp(prefix="rlhf-ray-", dir="/tmp"))
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `rlhf` for job drivers
            "RAY_USAGE_STATS_ENABLED": "0",
            # Every node in the same mode: a head finds the user's token by itself, a worker
            # node only when told (Ray 2.60). No token on this machine: no authentication.
            "RAY_AUTH_MODE": "token" if jobs.auth_headers() else "disabled",
            **(env or {}),
        }
        self.env.pop("RAY_ADDRESS", None)
        self.processes: list[subprocess.Popen] = []
        self.gcs_port = free_port()
        self.dashboard_url = f"http://127.0.0.1:{free_port()}"

    def start_head(self, num_cpus: int, resources: dict[str, float]) -> None:
        """The head: GCS, dashboard on 127.0.0.1, a raylet with ``num_cpus`` and ``resources``."""
        port = self.dashboard_url.rsplit(":", 1)[1]
        self._start(
            "head",
            [
                "--head",
                f"--port={self.gcs_port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={port}",
                f"--ray-client-server-port={free_port()}",
            ],
            num_cpus,
            resources,
        )

    def add_node(self, name: str, num_cpus: int, resources: dict[str, float]) -> None:
        """A worker node joining the head."""
        self._start(name, [f"--address=127.0.0.1:{self.gcs_port}"], num_cpus, resources)

    def _start(self, name: str, args: list[str], num_cpus: int, resources: dict) -> None:
        command = [
            str(BIN / "ray"),
            "start",
            "--block",
            f"--temp-dir={self.root / name}",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            f"--resources={json.dumps(resources)}",
            f"--dashboard-agent-listen-port={free_port()}",  # 52365 by default: one per machine
            "--disable-usage-stats",
            *args,
        ]
        log = (self.root / f"{name}.log").open("w")
        self.processes.append(
            subprocess.Popen(
                command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, ended by us alone
            )
        )

    def wait_for_nodes(self, count: int, timeout_s: float = 120.0) -> None:
        """Waits until the Jobs API answers and ``count`` nodes are alive."""
        deadline = time.monotonic() + timeout_s
        alive, last_error = 0, None
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"a Ray node exited early; logs:\n{self.logs()}")
            try:
                nodes = jobs.list_nodes(self.dashboard_url)
                alive = sum(1 for node in nodes if node.state == "ALIVE")
                if alive >= count:
                    return
            except Exception as error:  # the dashboard is still starting
                last_error = error
            time.sleep(1.0)
        raise TimeoutError(f"{alive} of {count} nodes up ({last_error}); logs:\n{self.logs()}")

    def logs(self) -> str:
        """The tail of every node's ``ray start`` output."""
        return "\n".join(
            f"--- {path.name}\n{path.read_text()[-2000:]}" for path in self.root.glob("*.log")
        )

    def shutdown(self) -> None:
        """Stops the nodes this object started (workers first), then removes the temp dir."""
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)
            with contextlib.suppress(ProcessLookupError):  # stragglers of our own group
                os.killpg(process.pid, signal.SIGKILL)
        self.processes.clear()
        shutil.rmtree(self.root, ignore_errors=True)

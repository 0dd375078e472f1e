"""The benchmarks' CPU accounting (benchmarks/harness.py, benchmarks/ppo.py): roles of a
process tree, CPU deltas across processes that appear and exit, the packing bound. No Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks import ppo
from benchmarks.harness import (
    DRIVER,
    OTHER,
    RAY_IDLE,
    RAY_SYSTEM,
    cpu_intervals,
    packing_bound,
    process_role,
    sample_tree_cpu,
    tree_roles,
)

SITE = "/venv/lib/python3.11/site-packages"


@pytest.mark.parametrize(
    ("cmdline", "role"),
    [
        ("ray::PPOPolicy.train_step", "PPOPolicy"),  # an actor running a call
        ("ray::Sampler", "Sampler"),  # an actor between calls
        ("ray::_free_address", "_free_address"),  # a task
        ("ray::IDLE", RAY_IDLE),
        ("ray::DashboardAgent", RAY_SYSTEM),
        ("ray::RuntimeEnvAgent", RAY_SYSTEM),
        (f"{SITE}/ray/core/src/ray/raylet/raylet --raylet_socket_name=/tmp/x", RAY_SYSTEM),
        (f"{SITE}/ray/core/src/ray/gcs/gcs_server --log_dir=/tmp/x", RAY_SYSTEM),
        (f"/venv/bin/python -u {SITE}/ray/_private/log_monitor.py --session-dir=/x", RAY_SYSTEM),
        ("g++ -O2 -c op.cpp", None),  # names no role: its parent's
        ("/venv/bin/python benchmarks/ppo.py --job {}", None),
    ],
)
def test_process_role(cmdline, role):
    assert process_role(cmdline) == role


def test_tree_roles_inherit_from_the_nearest_named_ancestor():
    processes = {
        1: (0, "/venv/bin/python benchmarks/ppo.py --job {}"),
        2: (1, f"{SITE}/ray/core/src/ray/raylet/raylet"),
        3: (2, "ray::Sampler.generate"),
        4: (3, "sh -c g++ op.cpp"),
        5: (4, "g++ op.cpp"),
        6: (1, "/venv/bin/python -c pass"),
        7: (99, "/venv/bin/python worker.py"),  # its parent is not in the listing
    }
    assert tree_roles(processes, root=1) == {
        1: DRIVER,
        2: RAY_SYSTEM,
        3: "Sampler",
        4: "Sampler",
        5: "Sampler",
        6: DRIVER,
        7: OTHER,
    }


def test_cpu_intervals_across_processes_that_appear_exit_and_change_role():
    first = {(1, 10.0): (DRIVER, 1.0), (2, 11.0): (RAY_SYSTEM, 0.5), (3, 12.0): (RAY_IDLE, 0.2)}
    second = {
        (1, 10.0): (DRIVER, 1.5),
        (2, 11.0): (RAY_SYSTEM, 0.7),
        (3, 12.0): ("Sampler", 1.2),  # the idle worker took an actor: counts as the actor
        (4, 20.0): ("PPOPolicy", 0.3),  # appeared: all of its 0.3 s
    }
    third = {
        (1, 10.0): (DRIVER, 2.0),
        (3, 12.0): ("Sampler", 2.0),
        (4, 25.0): ("PPOPolicy", 0.1),  # pid 4 again, another process (created later)
    }  # pid 2 and the first pid 4 exited: what they spent since `second` is lost
    machine = [(100.0, 5.0), (103.0, 5.25), (105.0, 5.25)]  # (busy, stolen) seconds
    first_interval, second_interval = cpu_intervals([first, second, third], machine)
    assert first_interval["cpu"] == pytest.approx(
        {DRIVER: 0.5, RAY_SYSTEM: 0.2, "Sampler": 1.0, "PPOPolicy": 0.3}
    )
    assert (first_interval["appeared"], first_interval["exited"]) == (1, 0)
    assert first_interval["others"] == pytest.approx(3.0 - 2.0)  # the machine's, not the tree's
    assert first_interval["steal"] == pytest.approx(0.25)
    assert second_interval["cpu"] == pytest.approx({DRIVER: 0.5, "Sampler": 0.8, "PPOPolicy": 0.1})
    assert (second_interval["appeared"], second_interval["exited"]) == (1, 2)
    assert second_interval["others"] == pytest.approx(2.0 - 1.4)
    assert second_interval["steal"] == pytest.approx(0.0)
    assert "others" not in cpu_intervals([first, second])[0]  # without machine readings


def test_packing_bound():
    assert packing_bound(256, 6.4, 2) == pytest.approx(80.0)  # 3.2 s of 2 busy cores
    assert packing_bound(256, 6.4, 4) == pytest.approx(160.0)


def test_cpu_rows_per_iteration_and_bounds():
    intervals = [
        {"cpu": {DRIVER: 1.0, "Sampler": 3.0}, "appeared": 0, "exited": 0, "others": 0.5},
        {"cpu": {DRIVER: 1.0, "Sampler": 1.0}, "appeared": 2, "exited": 1, "others": 0.3},
    ]
    ours = {
        "name": "ours",
        "cpu": ppo.cpu_per_iteration(intervals, 2),
        "wall_s": 3.2,
    }
    trl = {"samples": 1024, "seconds": {"train": 16.0}}
    trl["cpu"] = {"cpu": {DRIVER: 24.0}, "appeared": 0, "exited": 0}
    trl["cpu_phases"] = {"generate": 8.0, "score": 0.4, "batch": 12.0}  # batch holds both
    mine, theirs = ppo.cpu_rows([ours], {"default": trl}, samples_per_iteration=256, cores=2)
    assert mine["cpu"] == {
        "roles": pytest.approx({DRIVER: 1.0, "Sampler": 2.0}),
        "total": pytest.approx(3.0),
        "appeared": 2,
        "exited": 1,
        "others": pytest.approx(0.4),
        "steal": 0.0,
    }
    assert mine["samples_per_s"] == pytest.approx(80.0)  # 256 samples in 3.2 s
    assert mine["bound"] == pytest.approx(256 * 2 / 3.0)  # 170.7 samples/s
    assert mine["busy_cores"] == pytest.approx(3.0 / 3.2)
    assert mine["per_sample_ms"] == pytest.approx(3000 / 256)
    # TRL: 1024 samples in 16 s with 24 core-s: per 256 samples 4 s and 6 core-s.
    assert theirs["name"] == "TRL default"
    assert theirs["cpu"]["roles"] == pytest.approx({DRIVER: 6.0})
    assert theirs["wall_s"] == pytest.approx(4.0)
    assert theirs["samples_per_s"] == pytest.approx(64.0)
    assert theirs["bound"] == pytest.approx(256 * 2 / 6.0)
    assert theirs["busy_cores"] == pytest.approx(1.5)
    assert theirs["phases"] == pytest.approx(  # a quarter of each: 12 - 8 - 0.4, 24 - 12
        {"generate": 2.0, "score": 0.1, "old + reference log-probs": 0.9, "train": 3.0}
    )


def test_sample_tree_cpu_counts_a_child_under_the_driver():
    burn = "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    child = subprocess.Popen(
        [sys.executable, "-c", burn + "print(flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        child.stdout.readline()  # it has burnt its 0.3 CPU-s and waits
        sample = sample_tree_cpu()
    finally:
        child.communicate("")
    (key,) = [key for key in sample if key[0] == child.pid]
    role, seconds = sample[key]
    assert role == DRIVER  # its command line names no role: its parent's, the test's process
    assert 0.3 <= seconds < 1.5
    assert any(role == DRIVER and key[0] != child.pid for key, (role, _) in sample.items())


def test_steady_window_leaves_out_the_first_and_the_last_staleness_intervals():
    assert ppo.steady_window(6, 0) == slice(1, 6)
    assert ppo.steady_window(6, 1) == slice(1, 5)  # round 5 samples no round 6
    assert list(range(6))[ppo.steady_window(6, 1)] == [1, 2, 3, 4]
    assert ppo.steady_window(2, 1) == slice(0, 2)  # nothing would be left: all

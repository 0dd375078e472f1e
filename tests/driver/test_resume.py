"""A killed offline DPO run resumes from its last checkpoint and continues the same run.

The uninterrupted run it must continue is ``test_dpo.py``'s (``dpo_run`` of
``tests/driver/conftest.py``): the killed run is its first 16 steps, with checkpoints. It is
killed as a user's is (``rlhf train`` SIGKILLed with its process group; it joins the session's
Ray as a driver joins a cluster, and its actors end with it); the resume runs in this process,
on the session's Ray, as the uninterrupted run did (``rlhf train --resume`` itself is run by the
killed-driver test of ``test_online_faults.py``)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from rlhf.config import from_dict, read_config_file, to_dict
from rlhf.run_dir import Checkpoints, read_metrics

pytestmark = pytest.mark.integration

# Checkpoints and a step budget change no step of a run with a constant learning rate.
SCHEDULE = {"max_steps": 16, "save_every": 4}


def _train(config_path):
    """``rlhf train`` in its own process group, as a user runs it."""
    cmd = [sys.executable, "-m", "rlhf.cli", "train", str(config_path)]
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def test_kill_then_resume_continues_the_same_run(ray_cluster, tmp_path, dpo_run):
    from rlhf.driver import dpo

    # The reference: test_dpo.py's run, never interrupted (in this process, on the session's
    # Ray), under the config the killed run starts from.
    expected = {r["step"]: r for r in read_metrics(dpo_run) if "train/loss" in r}
    data = read_config_file(dpo_run / "config.yaml")
    assert data["trainer"]["lr_scheduler"] == "constant" and len(expected) >= 16, (
        "the killed run must be the first 16 steps of the uninterrupted one"
    )
    data["output_dir"] = str(tmp_path / "killed")
    data["schedule"].update(SCHEDULE)
    # The session's Ray: with a local Ray of its own the job's first checkpoint came 55 s after
    # its start, against 28 s (one run each, machine at load 7-13).
    data["ray"]["address"] = ray_cluster.get_runtime_context().gcs_address
    cfg = from_dict(dpo.DPOConfig, data)
    config_path = tmp_path / "killed.yaml"
    config_path.write_text(yaml.safe_dump(to_dict(cfg)))
    checkpoints = Checkpoints(tmp_path / "killed")
    proc = _train(config_path)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        latest = checkpoints.latest()
        if latest is not None and checkpoints.driver_state(latest)["step"] >= 4:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = checkpoints.driver_state(checkpoints.latest())["step"]
    assert 4 <= killed_at < 16

    dpo.run(cfg, resume=True)
    records = [r for r in read_metrics(tmp_path / "killed") if "train/loss" in r]
    steps = [r["step"] for r in records]
    assert steps == list(range(1, 17)), "each step logged once, none lost, none repeated"
    for r in records:
        want = expected[r["step"]]
        assert r["train/loss"] == pytest.approx(want["train/loss"], abs=2e-4), r["step"]
        assert r["train/lr"] == pytest.approx(want["train/lr"])
    assert (tmp_path / "killed" / "model" / "config.json").exists()

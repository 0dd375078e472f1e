"""A killed offline DPO run resumes from its last checkpoint and continues the same run.

The run is killed as a user's is (``rlhf train`` SIGKILLed with its process group, its own
Ray); the resume runs in this process, on the session's Ray, as the reference run does (``rlhf
train --resume`` itself is run by the killed-driver test of ``test_online_faults.py``)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from rlhf.config import to_dict
from rlhf.run_dir import Checkpoints, read_metrics
from tests.driver.conftest import dpo_config

pytestmark = pytest.mark.integration

SCHEDULE = {"epochs": 2, "max_steps": 16, "save_every": 4, "eval_every": 0}


def _train(config_path):
    """``rlhf train`` in its own process group (its own local Ray), as a user runs it."""
    cmd = [sys.executable, "-m", "rlhf.cli", "train", str(config_path)]
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def test_kill_then_resume_continues_the_same_run(
    ray_cluster, tmp_path, task_pairs, embedded_model_path, table_cache
):
    from rlhf.driver import dpo

    # The reference: the same run, never interrupted (in this process, on the session's Ray).
    whole = dpo.run(
        dpo_config(
            task_pairs, tmp_path / "whole", embedded_model_path, table_cache, schedule=SCHEDULE
        )
    )
    expected = {r["step"]: r for r in read_metrics(whole) if "train/loss" in r}

    cfg = dpo_config(
        task_pairs, tmp_path / "killed", embedded_model_path, table_cache, schedule=SCHEDULE
    )
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

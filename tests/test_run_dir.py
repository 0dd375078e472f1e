"""Run directory: metrics resumable without duplicates, checkpoints never lost."""

import json

from rlhf.run_dir import Checkpoints, MetricsLogger, read_metrics


def test_metrics_jsonl_and_tensorboard(tmp_path):
    logger = MetricsLogger(tmp_path)
    for step in range(1, 5):
        logger.log(step, {"train/loss": 1.0 / step, "note": "x", "bad": float("nan")})
    logger.close()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[1]["train/loss"] == 0.5 and records[0]["bad"] is None
    assert any((tmp_path / "tensorboard").iterdir())


def test_resumed_logger_drops_steps_after_the_checkpoint(tmp_path):
    logger = MetricsLogger(tmp_path)
    for step in range(1, 6):
        logger.log(step, {"train/loss": float(step)})
    logger.close()
    resumed = MetricsLogger(tmp_path, resume_step=3)
    resumed.log(4, {"train/loss": 40.0})
    resumed.close()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["train/loss"] == 40.0


def test_resumed_logger_drops_rounds_after_the_checkpoint_even_at_the_same_step(tmp_path):
    # Round 1 had no preferences, hence no training steps: its record shares step 2 with
    # round 0's. The run was killed before round 1's checkpoint (step 2, 1 round done).
    logger = MetricsLogger(tmp_path)
    logger.log(1, {"train/loss": 1.0})
    logger.log(2, {"train/loss": 2.0})
    logger.log(2, {"round": 0, "eval/reward/mean": 0.5})
    logger.log(2, {"round": 1, "eval/reward/mean": 0.6})
    logger.close()
    resumed = MetricsLogger(tmp_path, resume_step=2, resume_round=1)
    resumed.log(2, {"round": 1, "eval/reward/mean": 0.6})
    resumed.close()
    rounds = [r["round"] for r in read_metrics(tmp_path) if "round" in r]
    assert rounds == [0, 1]
    assert len(read_metrics(tmp_path)) == 4


def test_checkpoint_commit_latest_and_prune(tmp_path):
    ckpts = Checkpoints(tmp_path, keep=2)
    assert ckpts.latest() is None
    for step in (10, 20, 30):
        staging = ckpts.staging_dir(step)
        (staging / "weights").write_text(str(step))
        ckpts.commit(staging, {"step": step})
    latest = ckpts.latest()
    assert latest.name == "step_00000030"
    assert ckpts.driver_state(latest) == {"step": 30}
    assert sorted(p.name for p in ckpts.root.glob("step_*")) == ["step_00000020", "step_00000030"]


def test_kill_during_save_keeps_last_good_checkpoint(tmp_path):
    ckpts = Checkpoints(tmp_path)
    good = ckpts.staging_dir(10)
    (good / "weights").write_text("10")
    ckpts.commit(good, {"step": 10})
    # A save that dies half-way: the staging dir exists, commit never ran.
    half = ckpts.staging_dir(20)
    (half / "weights").write_text("partial")
    latest = ckpts.latest()
    assert latest.name == "step_00000010"
    assert json.loads((latest / "driver_state.json").read_text())["step"] == 10
    assert (latest / "weights").read_text() == "10"

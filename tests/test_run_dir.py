"""Run directory: metrics resumable without duplicates, checkpoints never lost."""

import json

import pytest

from rlhf.run_dir import (
    RUN_MARKER,
    Checkpoints,
    MetricsLogger,
    RunDirectoryError,
    clear_for_fresh_run,
    mark_run_dir,
    read_metrics,
)


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


def test_resumed_logger_drops_the_final_evaluation_it_will_make_again(tmp_path):
    # The run finished (2 rounds, then the final evaluation) and is resumed from its last
    # checkpoint: the rounds stay, the final record goes (the resumed run evaluates again).
    logger = MetricsLogger(tmp_path)
    logger.log(2, {"round": 0, "eval/reward/mean": 0.5})
    logger.log(4, {"round": 1, "eval/reward/mean": 0.6})
    logger.log(4, {"final/reward/mean": 0.7, "final/policy_version": 2})
    logger.close()
    MetricsLogger(tmp_path, resume_step=4, resume_round=2).close()
    assert [r.get("round") for r in read_metrics(tmp_path)] == [0, 1]


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


# A fresh `rlhf demo` replaces only what this project wrote (never `.`, `~` or a link's target).


def _user_files(directory):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "thesis.tex").write_text("years of work")
    (directory / "data").mkdir(exist_ok=True)
    (directory / "data" / "x.csv").write_text("1,2")
    return directory


def test_fresh_run_replaces_a_marked_run_directory(tmp_path):
    run = tmp_path / "run"
    mark_run_dir(run)
    (run / "metrics.jsonl").write_text("{}\n")
    clear_for_fresh_run(run)
    assert not run.exists()


def test_fresh_run_leaves_missing_and_empty_directories(tmp_path):
    clear_for_fresh_run(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    (tmp_path / "empty").mkdir()
    clear_for_fresh_run(tmp_path / "empty")
    assert (tmp_path / "empty").is_dir()


@pytest.mark.parametrize("kind", ["unmarked", "file", "link_to_unmarked", "link_to_run"])
def test_fresh_run_refuses_anything_it_did_not_create(tmp_path, kind):
    target = _user_files(tmp_path / "home")
    if kind == "unmarked":
        path = target
    elif kind == "file":
        path = target / "thesis.tex"
    else:
        if kind == "link_to_run":
            mark_run_dir(target)
        path = tmp_path / "link"
        path.symlink_to(target, target_is_directory=True)
    with pytest.raises(RunDirectoryError, match=str(path)):
        clear_for_fresh_run(path)
    assert (target / "thesis.tex").read_text() == "years of work"
    assert (target / "data" / "x.csv").exists()
    assert path.exists()


def test_a_run_written_before_markers_is_replaced_but_not_one_with_other_files(tmp_path):
    run = tmp_path / "old_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError):
        clear_for_fresh_run(run)
    (run / "notes.txt").unlink()
    clear_for_fresh_run(run)
    assert not run.exists()


def test_a_marker_that_is_a_link_does_not_count(tmp_path):
    elsewhere = tmp_path / "marker"
    elsewhere.write_text("")
    target = _user_files(tmp_path / "home")
    (target / RUN_MARKER).symlink_to(elsewhere)
    with pytest.raises(RunDirectoryError):
        clear_for_fresh_run(target)
    assert (target / "thesis.tex").exists()


@pytest.mark.parametrize("how", ["directory", "link"])
def test_rlhf_demo_never_deletes_a_directory_it_did_not_create(tmp_path, monkeypatch, how):
    """`rlhf demo output_dir=X`: the data-loss bug (it removed X, whatever X was)."""
    from rlhf import cli

    target = _user_files(tmp_path / "checkout")
    path = target
    if how == "link":
        path = tmp_path / "link"
        path.symlink_to(target, target_is_directory=True)
    monkeypatch.setattr(cli, "cmd_train", lambda args: pytest.fail("the demo must not start"))
    with pytest.raises((RunDirectoryError, SystemExit)) as raised:
        cli.main(["demo", f"output_dir={path}"])
    assert str(path) in str(raised.value)
    assert (target / "thesis.tex").read_text() == "years of work"
    assert (target / "data" / "x.csv").exists()


def test_every_run_directory_is_marked(tmp_path):
    from dataclasses import dataclass

    from rlhf.driver.setup import open_run

    @dataclass
    class Job:
        output_dir: str

    run = open_run(Job(str(tmp_path / "run")), resume=False)
    assert (run / RUN_MARKER).is_file()
    (run / "metrics.jsonl").write_text("{}\n")
    clear_for_fresh_run(run)  # so a later fresh demo may replace it
    assert not run.exists()

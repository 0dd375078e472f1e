"""The ``rlhf`` command's error paths: a message that says where, never a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_an_unknown_algorithm_is_a_config_error_naming_the_known_ones():
    result = subprocess.run(
        [sys.executable, "-m", "rlhf.cli", "train", "configs/dpo.yaml", "algorithm=ppx"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("rlhf train: config error: configs/dpo.yaml: algorithm:"), last
    assert "'ppx'" in last and "dpo, online_dpo, ppo" in last


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "configs/online_dpo.yaml", "samplers.sampling.n=1"],
            "samplers.sampling.n is 1, but rounds.strategy 'best_vs_worst' builds preferences "
            "from at least 2 responses per prompt, so no round would train",
        ),
        (["train", "configs/dpo.yaml", "trainer.lr=.nan"], "trainer.lr: must be a finite number"),
        (["train", "configs/dpo.yaml", "loss.beta=.nan"], "loss.beta: must be a finite number"),
        (["train", "configs/dpo.yaml", "schedule.max_steps=0"], "max_steps 0 would train nothing"),
        (
            ["train", "configs/dpo.yaml", "trainer.num_gpus_per_rank=1"],
            "device: cpu with trainer.num_gpus_per_rank 1.0: set it to 0",
        ),
        (
            ["train", "configs/ppo.yaml", "critic.num_gpus_per_rank=1"],
            "device: cpu with critic.num_gpus_per_rank 1.0",
        ),
        (
            ["train", "configs/dpo.yaml", "loss.options.gamma=1.0"],
            "loss: options: loss 'sigmoid' takes no option 'gamma'; its options: label_smoothing",
        ),
        (
            ["train", "configs/dpo.yaml", "loss.options.label_smoothing=0.7"],
            "label_smoothing must be in [0, 0.5), got 0.7",
        ),
        (["train", "configs/dpo.yaml", "trainer.seed=1"], "trainer.seed is no longer a key"),
        (["train", "configs/dpo.yaml", "trainer.bf16=true"], "set model.dtype: bfloat16"),
        (["train", "configs/dpo.yaml", "data.shuffle=false"], "data.shuffle is no longer a key"),
        (
            ["train", "configs/dpo.yaml", "trainer.micro_batch_size=4"],
            "renamed trainer.micro_batch_prompts",
        ),
        (["train", "configs/ppo.yaml", "trainer.share_prompt=false"], "has no effect in PPO"),
        (["demo", "configs/demo.yaml", "sampling.n=8"], "unknown key sampling"),
    ],
)
def test_dry_run_refuses_configs_that_cannot_train_in_one_line(argv, message, monkeypatch):
    """Config errors come at load, before the model, the data or Ray: one line, no traceback."""
    from rlhf.cli import main

    monkeypatch.chdir(REPO)

    with pytest.raises(SystemExit) as stop:
        main([*argv, "--dry-run"])
    text = str(stop.value.code)
    assert text.startswith(f"rlhf {argv[0]}: config error: "), text
    assert message in text, text
    assert "\n" not in text


def test_dry_run_checks_a_local_run_against_the_ray_it_would_start():
    from rlhf.cluster.resources import ClusterFitError, actor_role, trainer_role
    from rlhf.driver.plan import check_resources
    from rlhf.models.deepspeed_config import PreferenceTrainerConfig
    from rlhf.schema import RayConfig

    stage = [trainer_role("trainer", PreferenceTrainerConfig(num_ranks=2)), actor_role("r", 1, 0)]
    assert check_resources(RayConfig(num_cpus=3), [stage]).startswith(
        "fit the local Ray it would start (3 CPU"
    )
    with pytest.raises(ClusterFitError, match=r"together need 3 CPU .* the cluster has 2"):
        check_resources(RayConfig(num_cpus=2), [stage])
    joined = check_resources(RayConfig(num_cpus=2, address="ray://head:10001"), [stage])
    assert joined.startswith("not checked: the job joins the cluster at ray://head:10001")
    assert "not checked" in check_resources(RayConfig(num_cpus=2, check_resources=False), [stage])


def test_a_demo_dry_run_leaves_the_previous_demo_run_alone(tmp_path, monkeypatch):
    """A fresh demo replaces its previous run directory; a dry run must not (it runs nothing)."""
    from rlhf.cli import main
    from rlhf.run_dir import mark_run_dir

    previous = tmp_path / "demo"
    mark_run_dir(previous)
    (previous / "metrics.jsonl").write_text("{}\n")
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit, match="samplers.sampling.n is 1"):  # refused at load
        main(["demo", f"output_dir={previous}", "samplers.sampling.n=1", "--dry-run"])
    assert (previous / "metrics.jsonl").exists()

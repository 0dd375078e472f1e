"""``rlhf submit``: what is sent (entrypoint, runtime environment, token), without a cluster."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from rlhf.cli import build_parser
from rlhf.cluster import jobs
from rlhf.config import ConfigError
from rlhf.driver.common import cluster_address
from rlhf.schema import RayConfig

REPO = Path(__file__).resolve().parents[2]


def test_entrypoint_is_rlhf_train_with_the_config_relative_to_the_upload(tmp_path):
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "job.yaml"
    config.write_text("algorithm: online_dpo\n")
    pin = "samplers.engine.resources={node_b: 1}"
    submission = jobs.Submission(str(config), [pin, "rounds.rounds=1"], working_dir=str(tmp_path))
    assert shlex.split(submission.entrypoint()) == [
        "rlhf", "train", "configs/job.yaml", pin, "rounds.rounds=1",
    ]  # fmt: skip
    resumed = jobs.Submission(str(config), [], resume=True, working_dir=str(tmp_path))
    assert resumed.entrypoint() == "rlhf train configs/job.yaml --resume"


def test_a_config_outside_the_upload_keeps_its_absolute_path_and_is_noted(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("output_dir: /shared/runs/x\n")
    submission = jobs.Submission(str(config), [], working_dir=str(REPO))
    assert submission.entrypoint() == f"rlhf train {config}"
    (note,) = jobs.submission_notes(submission)
    assert note.startswith(f"{config} is outside the uploaded directory {REPO}")


def test_a_relative_output_dir_is_noted_and_an_absolute_one_is_not(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("output_dir: runs/x\n")
    submission = jobs.Submission(str(config), [], working_dir=str(tmp_path))
    (note,) = jobs.submission_notes(submission)
    assert note.startswith("output_dir runs/x is relative")
    submission.overrides = ["output_dir=/shared/runs/x"]
    assert jobs.submission_notes(submission) == []


def test_runtime_env_adds_options_to_a_given_one(tmp_path):
    module = tmp_path / "my_rewards"
    module.mkdir()
    submission = jobs.Submission(
        None,
        working_dir=str(tmp_path),
        pip=["rlhf==0.1.0"],
        py_modules=[str(module)],
        env_vars={"HF_HOME": "/shared/hf"},
        runtime_env={"pip": ["pyarrow"], "env_vars": {"A": "1"}, "excludes": ["data/"]},
    )
    assert submission.job_runtime_env() == {
        "working_dir": str(tmp_path),
        "excludes": ["data/", *jobs.DEFAULT_EXCLUDES],
        "pip": ["pyarrow", "rlhf==0.1.0"],
        "py_modules": [str(module)],
        "env_vars": {"A": "1", "HF_HOME": "/shared/hf"},
    }
    assert ".venv" in jobs.DEFAULT_EXCLUDES and ".git" in jobs.DEFAULT_EXCLUDES


def test_token_comes_from_ray_variables_or_file(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert jobs.auth_headers() == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert jobs.auth_headers() == {"Authorization": "Bearer from-home"}
    (tmp_path / "token").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    assert jobs.auth_headers() == {"Authorization": "Bearer from-path"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs.auth_headers() == {"Authorization": "Bearer from-env"}


def test_address_defaults_to_ray_variables_then_this_machine(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert jobs.default_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert jobs.default_address() == "http://head:8265"
    args = build_parser().parse_args(["status", "raysubmit_1"])
    assert (args.job_id, args.address) == ("raysubmit_1", "http://head:8265")


def test_submit_arguments(monkeypatch):
    args = build_parser().parse_args(
        ["submit", "configs/online_dpo.yaml", "rounds.rounds=1", "--address", "http://h:8265"]
        + ["--no-wait", "--pip", "a", "--pip", "b", "--env", "K=V", "--env", "E=x=y"]
    )
    assert (args.config, args.overrides, args.address) == (
        "configs/online_dpo.yaml",
        ["rounds.rounds=1"],
        "http://h:8265",
    )
    assert args.no_wait and args.pip == ["a", "b"]
    assert jobs.parse_env_vars(args.env) == {"K": "V", "E": "x=y"}
    with pytest.raises(ConfigError, match="--env 'K' is not of the form KEY=VALUE"):
        jobs.parse_env_vars(["K"])


def test_a_job_driver_joins_the_cluster_ray_gives_it(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(RayConfig()) is None  # a local Ray
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # what a Ray job's driver is given
    assert cluster_address(RayConfig()) == "10.0.0.1:6379"
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.1:8265")  # set for `ray job` commands
    assert cluster_address(RayConfig()) is None
    assert cluster_address(RayConfig(address="ray://head:10001")) == "ray://head:10001"

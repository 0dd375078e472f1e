"""The checks a driver runs before work starts (model path, device) and on each step's loss."""

import json
import time

import pytest

from rlhf.config import ConfigError
from rlhf.driver.checks import (
    TrainingDivergedError,
    check_finite_loss,
    check_local_device,
    check_model_path,
)


def _error(path: str) -> str:
    with pytest.raises(ConfigError) as error:
        check_model_path(path)
    return str(error.value)


def test_a_causal_lm_directory_passes(tmp_path):
    from tests.models.tiny_llama import build_tiny_llama

    model = build_tiny_llama(tmp_path / "sft")
    assert check_model_path(str(model)) == str(model)


def test_missing_paths_fail_at_once_without_asking_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "output").mkdir()
    start = time.monotonic()
    assert _error(str(tmp_path / "nothing")) == (
        f"model.path: {tmp_path / 'nothing'} does not exist (relative paths start at {tmp_path}); "
        "give a model directory (one with config.json) or a hub name like org/name"
    )
    # "output/sft" looks like a hub name, but output/ is here: a local typo
    assert _error("output/sft").startswith("model.path: output/sft does not exist")
    assert _error("./models/sft").startswith("model.path: ./models/sft does not exist")
    assert _error("sft-model").startswith("model.path: sft-model does not exist")
    assert time.monotonic() - start < 2


def test_hub_name_offline_and_not_cached_fails_at_once(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    assert _error("no-such-org/no-such-model") == (
        "model.path: no-such-org/no-such-model is neither a local directory nor in the Hugging "
        "Face cache, and HF_HUB_OFFLINE is set; give a local model directory or download it first"
    )
    assert time.monotonic() - start < 2


def test_directories_that_hold_no_causal_lm_are_named(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _error(str(empty)) == (
        f"model.path: {empty} is an empty directory; no model was saved there"
    )
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a model")
    assert _error(str(other)).startswith(f"model.path: {other} has no config.json")
    assert _error(str(other / "notes.txt")) == (
        f"model.path: {other / 'notes.txt'} is a file; give the model's directory"
    )
    classifier = tmp_path / "reward"
    classifier.mkdir()
    config = {"architectures": ["LlamaForSequenceClassification"], "model_type": "llama"}
    (classifier / "config.json").write_text(json.dumps(config))
    assert _error(str(classifier)) == (
        f"model.path: {classifier} holds a LlamaForSequenceClassification, not a causal "
        "language model (...ForCausalLM); give the policy's directory (a reward classifier "
        "goes under reward:)"
    )
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    assert check_model_path(str(gpt2)) == str(gpt2)


def test_cuda_on_a_machine_without_one_is_refused_before_work(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device: cuda, but this machine has no CUDA GPU"):
        check_local_device("cuda", None)
    check_local_device("cuda", "10.0.0.1:6379")  # a cluster's nodes may have GPUs
    check_local_device("cpu", None)


@pytest.mark.parametrize("loss", [float("nan"), float("inf"), float("-inf")])
def test_a_loss_that_is_not_finite_stops_the_run_naming_step_and_row(loss):
    with pytest.raises(TrainingDivergedError) as error:
        check_finite_loss({"loss": loss, "lr": 1e-3}, 12, "data/prefs.jsonl line 17")
    assert str(error.value).startswith(
        f"step 12: loss is {loss}; the batch's first row is data/prefs.jsonl line 17. "
        "The run stopped before saving anything from this step"
    )
    check_finite_loss({"loss": 0.69}, 1, "data/prefs.jsonl line 1")


def test_a_role_loss_that_is_not_finite_stops_ppo_naming_the_key():
    """PPO's merged metrics name each role's losses (policy/policy_loss, critic/value_loss)."""
    metrics = {"policy/policy_loss": 0.1, "critic/value_loss": float("nan"), "policy/kl": 0.0}
    with pytest.raises(TrainingDivergedError, match="step 3: critic/value_loss is nan; "):
        check_finite_loss(metrics, 3, "round 0's training sample 5")
    check_finite_loss({"policy/policy_loss": 0.1, "policy/tokens": 12}, 3, "round 0")

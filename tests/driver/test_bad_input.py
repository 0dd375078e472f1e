"""Bad input stops a job before any actor starts, with a message that says where."""

import json
import subprocess
import sys

import pytest

from rlhf.data.errors import DataError
from tests.driver.conftest import dpo_config


def _rlhf(*args):
    return subprocess.run(
        [sys.executable, "-m", "rlhf.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_wrong_config_key_names_itself_and_the_file():
    result = _rlhf("train", "configs/dpo.yaml", "loss.nam=ipo")
    assert result.returncode != 0
    assert "configs/dpo.yaml: unknown key loss.nam; valid keys of loss: beta, name, options" in (
        result.stderr
    )


def test_unknown_loss_lists_the_known_ones():
    result = _rlhf("train", "configs/dpo.yaml", "loss.name=sigmoidd")
    assert result.returncode != 0
    assert "unknown preference_loss 'sigmoidd'" in result.stderr
    assert "hinge, ipo, kto, nca_pair, orpo, plackett_luce, robust, rpo, sft, sigmoid" in (
        result.stderr
    )


def test_wrong_type_names_key():
    result = _rlhf("train", "configs/dpo.yaml", "trainer.num_ranks=two")
    assert result.returncode != 0
    assert "trainer.num_ranks: expected an integer, got str 'two'" in result.stderr


@pytest.mark.integration
def test_bad_row_is_named_before_training(ray_cluster, tmp_path, embedded_model_path):
    from rlhf.driver import dpo

    rows = [
        {"prompt": "the film was", "chosen": " great .", "rejected": " bad ."},
        {"prompt": "i saw it and", "chosen": " loved it .", "rejected": " hated it ."},
        {"prompt": "the plot", "chosen": " was fun .", "rejected": ""},
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = dpo_config(path, tmp_path / "run", embedded_model_path, tmp_path / "cache")
    with pytest.raises(DataError, match=r"bad\.jsonl line 3, field 'rejected': empty response"):
        dpo.run(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_online_rounds_need_held_out_prompts():
    result = _rlhf("train", "configs/online_dpo.yaml", "rounds.eval_prompts=0")
    assert result.returncode != 0
    assert "rounds: eval_prompts must be at least 1" in result.stderr

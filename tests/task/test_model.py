"""The tiny-model builder: masking, schedule, cache key, and (integration) a real small build."""

import json
import time
from pathlib import Path

import pytest
import torch

from rlhf.task import model as builder
from rlhf.task.model import (
    IGNORE,
    TinyModelSettings,
    _collate,
    _lr_factor,
    build_tiny_model,
    default_cache_dir,
)


def test_collate_masks_prompt_and_padding_by_position():
    # pad id 2 equals the last completion token: masking by id would drop it
    examples = [([1, 7, 8, 9, 2], 2), ([1, 7, 2], 1)]
    input_ids, attention_mask, labels = _collate(examples, pad_id=2)
    assert input_ids.tolist() == [[1, 7, 8, 9, 2], [1, 7, 2, 2, 2]]
    assert attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert labels.tolist() == [
        [IGNORE, IGNORE, 8, 9, 2],
        [IGNORE, 7, 2, IGNORE, IGNORE],
    ]


def test_learning_rate_warms_up_then_decays_to_the_floor():
    s = TinyModelSettings(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert _lr_factor(0, s) == pytest.approx(0.1)
    assert _lr_factor(9, s) == pytest.approx(1.0)
    assert _lr_factor(10, s) == pytest.approx(1.0)
    assert _lr_factor(60, s) == pytest.approx(0.55)  # half way down the cosine
    assert _lr_factor(110, s) == pytest.approx(0.1)


def test_cache_key_is_stable_and_covers_every_setting(monkeypatch):
    key = TinyModelSettings().key()
    assert key == TinyModelSettings().key()
    keys = {key, TinyModelSettings(seed=1).key(), TinyModelSettings(steps=7).key()}
    keys.add(TinyModelSettings(num_layers=3).key())
    assert len(keys) == 4
    monkeypatch.setattr(builder, "BUILDER_VERSION", builder.BUILDER_VERSION + 1)
    assert TinyModelSettings().key() != key


@pytest.fixture
def fake_builds(monkeypatch) -> list[int]:
    """Replaces training by writing ``task.json`` only; returns the steps of each build."""
    builds: list[int] = []

    def fake(out: Path, settings: TinyModelSettings, progress: bool) -> None:
        builds.append(settings.steps)
        (out / "task.json").write_text(json.dumps({"build": len(builds)}))

    monkeypatch.setattr(builder, "_build_into", fake)
    return builds


def test_cache_is_reused_rebuilt_on_new_settings_and_forced(fake_builds, tmp_path: Path):
    path = build_tiny_model(tmp_path, steps=4, progress=False)
    assert path.name == f"tiny-sentiment-{TinyModelSettings(steps=4).key()}"
    assert build_tiny_model(tmp_path, steps=4, progress=False) == path
    assert fake_builds == [4]
    other = build_tiny_model(tmp_path, steps=3, progress=False)
    assert other != path and fake_builds == [4, 3]
    assert build_tiny_model(tmp_path, steps=4, progress=False, force=True) == path
    assert json.loads((path / "task.json").read_text()) == {"build": 3}
    visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))
    assert visible == sorted([path.name, other.name])  # no temporary directories left


def test_a_directory_without_task_json_is_not_a_build(fake_builds, tmp_path: Path):
    half = tmp_path / f"tiny-sentiment-{TinyModelSettings(steps=4).key()}"
    half.mkdir()
    (half / "config.json").write_text("{}")
    assert build_tiny_model(tmp_path, steps=4, progress=False) == half
    assert fake_builds == [4] and (half / "task.json").is_file()


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("RLHF_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "rlhf"


def test_a_failed_build_leaves_nothing_behind(monkeypatch, tmp_path: Path):
    def crash(out: Path, settings: TinyModelSettings, progress: bool) -> None:
        (out / "config.json").write_text("{}")  # half written
        raise KeyboardInterrupt

    monkeypatch.setattr(builder, "_build_into", crash)
    with pytest.raises(KeyboardInterrupt):
        build_tiny_model(tmp_path, steps=3, progress=False)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.integration
def test_small_build_loads_with_auto_classes_and_is_reused(tmp_path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_model(tmp_path, steps=4, progress=False)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.head_dim == 64 and model.config.num_key_value_heads == 2
    assert model.config.vocab_size == len(tokenizer) and model.dtype == torch.float32
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id == 2
    ids = tokenizer("i watched the new horror film and it", return_tensors="pt")["input_ids"]
    assert ids[0, 0] == tokenizer.bos_token_id
    assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))

    task = json.loads((path / "task.json").read_text())
    assert task["settings"]["steps"] == 4 and task["final_sft_loss"] > 0
    assert 0.0 <= task["sampled"]["mean_reward"] <= 1.0 and task["greedy"]["examples"]

    written = (path / "model.safetensors").stat().st_mtime_ns
    started = time.perf_counter()
    assert build_tiny_model(tmp_path, steps=4, progress=False) == path
    assert time.perf_counter() - started < 1.0
    assert (path / "model.safetensors").stat().st_mtime_ns == written


@pytest.mark.integration
def test_default_model_writes_mixed_sentiment(embedded_model_path: str):
    """The real embedded model (built once per cache): mixed rewards, completions that stop."""
    task = json.loads((Path(embedded_model_path) / "task.json").read_text())
    sampled = task["sampled"]
    assert 0.35 <= sampled["mean_reward"] <= 0.65 and sampled["std_reward"] > 0.15
    assert sampled["finished_fraction"] >= 0.95

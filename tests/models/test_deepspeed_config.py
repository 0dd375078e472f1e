"""The DeepSpeed config built from the trainer sections, their validation, and the lr it
schedules."""

from __future__ import annotations

import math
import os

import pytest
import torch

from rlhf.config import ConfigError, from_dict
from rlhf.models.deepspeed_config import (
    ModelLoad,
    PPOTrainerConfig,
    PreferenceTrainerConfig,
    TrainerConfig,
    deepspeed_config,
    scheduler_start,
)


def test_stage_0_plain_adamw_and_constant_lr() -> None:
    cfg = PreferenceTrainerConfig(zero_stage=0, lr=1e-5, micro_batch_prompts=4, num_ranks=2)
    ds = deepspeed_config(cfg)
    assert ds["zero_optimization"] == {"stage": 0, "overlap_comm": False}
    assert ds["optimizer"] == {
        "type": "AdamW",
        "params": {"lr": 1e-5, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
    }
    assert "scheduler" not in ds  # constant lr, no warmup: the optimizer's lr is it
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["train_batch_size"] == 8  # 4 prompts x 1 accumulation step x 2 ranks
    assert ds["managed_gradient_accumulation"] is False
    assert ds["gradient_clipping"] == 1.0
    assert ds["bf16"] == {"enabled": False}


def test_stage_2_with_offloaded_optimizer() -> None:
    cfg = PreferenceTrainerConfig(
        zero_stage=2, offload_optimizer=True, gradient_accumulation_steps=4
    )
    ds = deepspeed_config(cfg)
    assert ds["zero_optimization"] == {
        "stage": 2,
        "offload_optimizer": {"device": "cpu", "pin_memory": False},
    }
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 4


def test_ppo_batches_count_sequences_without_accumulation() -> None:
    ds = deepspeed_config(PPOTrainerConfig(micro_batch_sequences=16, num_ranks=2))
    assert ds["train_micro_batch_size_per_gpu"] == 16
    assert ds["gradient_accumulation_steps"] == 1
    assert ds["train_batch_size"] == 32  # 16 sequences x 2 ranks


def test_stage_3_with_offloaded_params_and_cosine() -> None:
    cfg = TrainerConfig(
        zero_stage=3,
        offload_params=True,
        lr_scheduler="cosine",
        warmup_steps=10,
        total_steps=100,
        min_lr_ratio=0.1,
    )
    ds = deepspeed_config(cfg, ModelLoad(dtype="bfloat16"))  # model.dtype decides bf16
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": False}
    assert "offload_optimizer" not in zero
    assert ds["bf16"] == {"enabled": True}
    assert ds["scheduler"] == {
        "type": "WarmupCosineLR",
        "params": {
            "total_num_steps": 101,  # shifted by the scheduler's start (see scheduler_start)
            "warmup_min_ratio": 0.0,
            "cos_min_ratio": 0.1,
            "warmup_num_steps": 10,
            "warmup_type": "linear",
        },
    }


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"zero_stage": 2, "offload_params": True}, "offload_params needs zero_stage: 3"),
        ({"zero_stage": 0, "offload_optimizer": True}, "offload_optimizer needs zero_stage"),
        ({"lr_scheduler": "cosine"}, "set total_steps"),
        ({"lr_scheduler": "linear", "total_steps": 5, "warmup_steps": 5}, "larger than warmup"),
        ({"micro_batch_prompts": 0}, "micro_batch_prompts must be >= 1"),
        ({"lr": float("nan")}, r"trainer\.lr: must be a finite number, got nan"),
        ({"betas": [0.9, float("inf")]}, r"trainer\.betas\[1\]: must be a finite number"),
        ({"eps": 0.0}, "eps must be > 0"),
        ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
        ({"num_gpus_per_rank": -1}, "num_gpus_per_rank must be >= 0"),
        ({"warmup_steps": 1}, "warmup_steps must be 0 or at least 2"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"betas": [0.9, 1.0]}, "betas must lie in"),
        ({"zero_stage": 4}, "zero_stage: 4 is not one of"),
    ],
)
def test_impossible_settings_are_config_errors(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(PreferenceTrainerConfig, settings, "trainer")


@pytest.mark.parametrize(
    ("cls", "key", "message"),
    [
        (PreferenceTrainerConfig, "seed", "top-level seed"),
        (PreferenceTrainerConfig, "trust_remote_code", "model.trust_remote_code"),
        (PreferenceTrainerConfig, "bf16", "model.dtype: bfloat16"),
        (PreferenceTrainerConfig, "micro_batch_size", "renamed trainer.micro_batch_prompts"),
        (PPOTrainerConfig, "micro_batch_size", "renamed micro_batch_sequences"),
        (PPOTrainerConfig, "share_prompt", "has no effect in PPO"),
        (PPOTrainerConfig, "gradient_accumulation_steps", "has no effect in PPO"),
    ],
)
def test_removed_keys_say_what_replaced_them(cls, key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"trainer\.{key} is no longer a key: .*{message}"):
        from_dict(cls, {key: 1}, "trainer")


def _lrs(cfg: TrainerConfig, steps: int) -> list[float]:
    """The lr of each optimizer step under DeepSpeed's own scheduler built from our config."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime import lr_schedules

    spec = deepspeed_config(cfg)["scheduler"]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = getattr(lr_schedules, spec["type"])(optimizer, **spec["params"])
    scheduler.step(scheduler_start(cfg))  # what the trainer does once at start
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step()  # DeepSpeed steps the scheduler after each update
    return lrs


def test_linear_decay_without_warmup_starts_at_full_lr() -> None:
    cfg = TrainerConfig(lr=1.0, lr_scheduler="linear", total_steps=4)
    assert _lrs(cfg, 5) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


def test_linear_warmup_then_constant() -> None:
    cfg = TrainerConfig(lr=1.0, warmup_steps=4)
    # Step 1 already learns (never lr 0); step W = 4 reaches the full lr.
    assert _lrs(cfg, 6) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_linear_warmup_then_decay() -> None:
    cfg = TrainerConfig(lr=1.0, warmup_steps=2, lr_scheduler="linear", total_steps=5)
    # Warmup k / 2; then (total + 1 - k) / (total + 1 - W) = (6 - k) / 4 from step 2 on.
    assert _lrs(cfg, 5) == pytest.approx([0.5, 1.0, 0.75, 0.5, 0.25])


def test_cosine_warmup_starts_above_zero_and_reaches_min_at_the_last_step() -> None:
    cfg = TrainerConfig(
        lr=1.0, warmup_steps=2, lr_scheduler="cosine", total_steps=5, min_lr_ratio=0.1
    )
    # Warmup k / 2 for k < 2; then progress (k - 1) / (total + 1 - W) = (k - 1) / 4.
    decay = [0.1 + 0.9 * (1 + math.cos(math.pi * (k - 1) / 4)) / 2 for k in range(2, 6)]
    assert _lrs(cfg, 5) == pytest.approx([0.5, *decay], abs=1e-9)
    assert _lrs(cfg, 5)[-1] == pytest.approx(0.1)


def test_cosine_without_warmup_reaches_min_at_the_last_step() -> None:
    cfg = TrainerConfig(lr=1.0, lr_scheduler="cosine", total_steps=4, min_lr_ratio=0.0)
    # DeepSpeed's WarmupCosineLR: step k has progress (k + 1) / total.
    expected = [(1 + math.cos(math.pi * (k + 1) / 4)) / 2 for k in range(4)]
    assert _lrs(cfg, 4) == pytest.approx(expected, abs=1e-9)

"""The steps preference training shares between offline and online DPO.

Tokenized preference tables get their reference log-probs (once, cached), then the trainer group
takes optimizer steps over them, evaluates, and checkpoints; the run directory keeps the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import ray

from rlhf.algorithms import UnknownNameError, get_preference_loss
from rlhf.config import ConfigError
from rlhf.data.loader import batches, collate
from rlhf.data.table import num_responses, with_ref_logps
from rlhf.driver.reference import response_logps
from rlhf.run_dir import Checkpoints
from rlhf.schema import EngineConfig


@dataclass
class LossConfig:
    """Which preference loss (a registry name or ``package.module:function``) and its options."""

    name: str = "sigmoid"  # sigmoid | ipo | hinge | plackett_luce | a plugin
    beta: float = 0.1
    options: dict[str, Any] = field(default_factory=dict)  # e.g. {label_smoothing: 0.1}

    def validate(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"beta must be positive, got {self.beta}")
        try:
            get_preference_loss(self.name)
        except (UnknownNameError, ImportError, TypeError, ValueError) as error:
            raise ConfigError(f"name: {error}") from None


@dataclass
class ReferenceConfig:
    """The reference server: vLLM (default) or the Hugging Face model."""

    backend: Literal["vllm", "hf"] = "vllm"
    engine: EngineConfig = field(default_factory=EngineConfig)
    chunk_size: int = 512  # sequences per request


@dataclass
class ScheduleConfig:
    """How long to train and how often to evaluate and save (in optimizer steps)."""

    epochs: int = 1  # (prompts per step: trainer.micro_batch_size x accumulation x ranks)
    max_steps: int | None = None
    eval_every: int = 0  # 0: at the end of each epoch only
    eval_batch_size: int = 64
    save_every: int = 0  # 0: at the end of each epoch only
    keep_checkpoints: int = 2
    length_grouping: bool = True  # batch sequences of similar length (less padding)

    def validate(self) -> None:
        for key in ("epochs", "eval_batch_size", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1")


@dataclass
class TrainState:
    """Where the run is; saved with every checkpoint so ``--resume`` continues the same order."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of this epoch already trained on
    round: int = 0  # online DPO: rounds completed
    tokens: int = 0


def add_reference_logps(server, table: pa.Table, chunk_size: int) -> pa.Table:
    """The table with a ``ref_logps`` column: one summed log-prob per response."""
    k = num_responses(table)
    prompts = table.column("prompt_ids").to_pylist()
    responses = table.column("response_ids").to_pylist()
    flat_prompts = [p for p, rs in zip(prompts, responses, strict=True) for _ in rs]
    flat_responses = [r for rs in responses for r in rs]
    flat = response_logps(server, flat_prompts, flat_responses, chunk_size)
    return with_ref_logps(table, [flat[i * k : (i + 1) * k] for i in range(table.num_rows)])


COUNTS = ("prompts", "tokens", "tokens_per_s")  # totals and rates, not averages over prompts


def train_step(group, table: pa.Table, indices: list[int], pad_token_id: int) -> dict[str, float]:
    """One optimizer step of the whole group on the given rows; the global metrics.

    The driver shards the batch over the ranks; each rank returns metrics already averaged
    over all ranks, so rank 0's answer is the group's.
    """
    batch = collate(table.take(indices), pad_token_id)
    return ray.get(group.call_sharded("train_step", batch))[0]


def evaluate(group, table: pa.Table, batch_size: int, pad_token_id: int) -> dict[str, float]:
    """Preference metrics on a held-out table (no gradient), averaged over all its prompts."""
    sums: dict[str, float] = {}
    count = 0
    for indices in batches(table, batch_size, seed=0, epoch=0, shuffle=False):
        batch = collate(table.take(indices), pad_token_id)
        metrics = ray.get(group.call_sharded("eval_step", batch))[0]
        for key, value in metrics.items():
            if key not in COUNTS:
                sums[key] = sums.get(key, 0.0) + value * batch.num_prompts
        count += batch.num_prompts
    return {key: value / count for key, value in sums.items()} | {"prompts": count}


def epoch_batches(
    table: pa.Table,
    batch_size: int,
    schedule: ScheduleConfig,
    seed: int,
    state: TrainState,
    shuffle: bool = True,
) -> Iterator[list[int]]:
    """The remaining batches of the state's epoch, in the order a fresh run would see them."""
    yield from batches(
        table,
        batch_size,
        seed,
        state.epoch,
        shuffle=shuffle,
        skip=state.batch_in_epoch,
        length_grouping=schedule.length_grouping and shuffle,
    )


def save_checkpoint(group, checkpoints: Checkpoints, state: TrainState) -> Path:
    """Every rank writes its DeepSpeed state into a staging dir; then it becomes the latest."""
    staging = checkpoints.staging_dir(state.step)
    ray.get(group.call("save_checkpoint", str(staging), "trainer", {}))
    return checkpoints.commit(staging, asdict(state))


def restore_checkpoint(group, checkpoints: Checkpoints) -> TrainState | None:
    """Loads the latest checkpoint into the group; None when the run has none."""
    latest = checkpoints.latest()
    if latest is None:
        return None
    ray.get(group.call("load_checkpoint", str(latest), "trainer"))
    return TrainState(**checkpoints.driver_state(latest))

"""Offline DPO: preference data -> reference log-probs (vLLM, once) -> DeepSpeed steps -> model.

rlhf train configs/dpo.yaml data.path=prefs.parquet loss.name=plackett_luce
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from rlhf.algorithms import get_preference_loss
from rlhf.config import ConfigError
from rlhf.data.config import DataConfig
from rlhf.data.formats import SHAPE_KINDS
from rlhf.data.table import source_of
from rlhf.driver.checkpoint import restore_checkpoint, save_checkpoint
from rlhf.driver.checks import check_finite_loss, check_local_device
from rlhf.driver.common import cluster_address, ray_session, resolve_model_path
from rlhf.driver.loops import register_loop
from rlhf.driver.preference_training import (
    LossConfig,
    ReferenceConfig,
    ScheduleConfig,
    TrainState,
    check_loss_data,
    check_tables,
    epoch_batches,
    evaluate,
    hold_table,
    step_metrics,
    submit_step,
)
from rlhf.driver.retry import bounded_get, ranks
from rlhf.driver.setup import (
    add_reference_tables,
    offline_stages,
    open_run,
    read_preference_tables,
    start_trainers,
    wait_for_roles,
)
from rlhf.models.deepspeed_config import PreferenceTrainerConfig
from rlhf.models.lora import check_target_modules
from rlhf.run_dir import Checkpoints, MetricsLogger
from rlhf.schema import ModelConfig, RayConfig, check_job


@dataclass
class DPOConfig:
    """Settings of an offline DPO run (``algorithm: dpo``)."""

    algorithm: Literal["dpo"] = "dpo"
    output_dir: str = "runs/dpo"
    seed: int = 0
    device: Literal["cpu", "cuda"] = "cpu"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    trainer: PreferenceTrainerConfig = field(default_factory=PreferenceTrainerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    keep_checkpoints: int = 2  # the last checkpoints kept for --resume (as in the online loops)
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self) -> None:
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be at least 1, got {self.keep_checkpoints}")
        if self.data.format != "auto":  # else each file's rows are checked once read
            where = f"data.format {self.data.format!r}"
            check_loss_data(
                get_preference_loss(self.loss.name), SHAPE_KINDS[self.data.format], where
            )
        check_job(self)


def total_steps(cfg: DPOConfig, train_rows: int) -> int:
    """Optimizer steps of the run: every epoch's batches, at most ``schedule.max_steps``."""
    steps = -(-train_rows // cfg.trainer.prompts_per_step) * cfg.schedule.epochs
    return steps if cfg.schedule.max_steps is None else min(steps, cfg.schedule.max_steps)


def plan_schedule(cfg: DPOConfig, model_path: str) -> list[str]:
    """For ``--dry-run``: reads and checks the data files (no reference pass) and counts the
    steps they make."""
    from rlhf.data.loader import split_by_prompt

    (train, held_out), _ = read_preference_tables(cfg, model_path)
    check_tables(cfg, train.table, held_out and held_out.table)
    table, eval_rows = train.table, 0 if held_out is None else held_out.table.num_rows
    if held_out is None and cfg.data.eval_fraction > 0:
        table, held = split_by_prompt(table, cfg.data.eval_fraction)
        eval_rows = held.num_rows
    step = cfg.trainer.prompts_per_step
    return [
        f"data: {table.num_rows} training rows, {eval_rows} held out",
        f"schedule: {total_steps(cfg, table.num_rows)} optimizer steps of {step} prompts "
        f"({cfg.schedule.epochs} epochs, max_steps {cfg.schedule.max_steps})",
    ]


@register_loop("dpo", config=DPOConfig, stages=offline_stages, schedule=plan_schedule)
def run(cfg: DPOConfig, resume: bool = False) -> Path:
    """Trains, evaluates and checkpoints; returns the run directory (final model in ``model/``)."""
    check_local_device(cfg.device, cluster_address(cfg.ray))
    model_path = resolve_model_path(cfg.model)
    run_dir = open_run(cfg, resume)
    prepared, tokenizer = read_preference_tables(cfg, model_path)  # data errors before Ray
    if cfg.trainer.lora.enabled:  # a target module the model lacks, before Ray too
        check_target_modules(model_path, cfg.trainer.lora, cfg.model.trust_remote_code)
    check_tables(cfg, prepared[0].table, prepared[1] and prepared[1].table)
    with ray_session(cfg.ray, *offline_stages(cfg)) as scope:
        train, held_out = add_reference_tables(cfg, model_path, prepared, scope)
        pad = tokenizer.pad_token_id
        group = scope.own(start_trainers(cfg, model_path))
        wait_for_roles(cfg, {"trainer": group})
        hold_table(group, "train", train, pad, cfg.ray.call_timeout_s)
        if held_out is not None:
            hold_table(group, "eval", held_out, pad, cfg.ray.call_timeout_s)
        checkpoints = Checkpoints(run_dir, keep=cfg.keep_checkpoints)
        timeout_s = cfg.ray.call_timeout_s  # a rank that dies while saving is named at once
        restored = (
            restore_checkpoint({"trainer": group}, checkpoints, TrainState, timeout_s)
            if resume
            else None
        )
        state = restored or TrainState()
        logger = MetricsLogger(run_dir, resume_step=state.step if resume else None)
        batch_size = cfg.trainer.prompts_per_step
        total = total_steps(cfg, train.num_rows)
        bar = tqdm(total=total, initial=state.step, desc="dpo", unit="step")
        saved_at = evaluated_at = None
        last_eval: dict[str, float] = {}
        while state.epoch < cfg.schedule.epochs and state.step < total:
            order = list(
                epoch_batches(
                    train,
                    batch_size,
                    cfg.schedule,
                    cfg.seed,
                    state,
                    shared_prompt=cfg.trainer.share_prompt,
                )
            )
            ahead: list | None = None  # the next step, submitted before this one ended
            for n, indices in enumerate(order):
                refs = ahead or submit_step(group, "train", indices)
                ahead = None
                if n + 1 < len(order) and _quiet(state.step + 1, cfg, total, held_out):
                    # The ranks go on with the next batch while the driver logs this one.
                    ahead = submit_step(group, "train", order[n + 1])
                metrics = step_metrics(refs)
                check_finite_loss(metrics, state.step + 1, source_of(train, indices[0]))
                state.step += 1
                state.batch_in_epoch += 1
                state.tokens += int(metrics.get("tokens", 0))
                logger.log(state.step, {f"train/{k}": v for k, v in metrics.items()})
                bar.update()
                bar.set_postfix(
                    loss=f"{metrics['loss']:.4f}", acc=f"{metrics['rewards/accuracies']:.2f}"
                )
                if _due(state.step, cfg.schedule.eval_every) and held_out is not None:
                    last_eval = _eval(group, held_out, cfg)
                    logger.log(state.step, last_eval)
                    evaluated_at = state.step
                if _due(state.step, cfg.schedule.save_every):
                    save_checkpoint({"trainer": group}, checkpoints, state, timeout_s=timeout_s)
                    saved_at = state.step
                if state.step >= total:
                    break
            else:  # the epoch ran out: evaluate and save at its end
                state.epoch += 1
                state.batch_in_epoch = 0
                if held_out is not None and evaluated_at != state.step:
                    last_eval = _eval(group, held_out, cfg)
                    logger.log(state.step, last_eval)
                    evaluated_at = state.step
                save_checkpoint({"trainer": group}, checkpoints, state, timeout_s=timeout_s)
                saved_at = state.step
        bar.close()
        if saved_at != state.step:
            save_checkpoint({"trainer": group}, checkpoints, state, timeout_s=timeout_s)
        if held_out is not None and evaluated_at != state.step:
            last_eval = _eval(group, held_out, cfg)
            logger.log(state.step, last_eval)
        if held_out is not None:
            print("held-out: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(last_eval.items())))
        refs = group.call("save_pretrained", str(run_dir / "model"))
        bounded_get(refs, ranks("trainer", len(refs)), timeout_s, "saving the model")
        logger.close()
    print(f"run directory: {run_dir} (model in {run_dir / 'model'})")
    return run_dir


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _quiet(step: int, cfg: DPOConfig, total: int, held_out) -> bool:
    """Whether nothing but logging follows ``step``: no evaluation, checkpoint or end.

    Only then may the next step start before this one's metrics are read: an evaluation or a
    checkpoint must see the weights of exactly ``step`` steps.
    """
    evaluates = held_out is not None and _due(step, cfg.schedule.eval_every)
    return not (evaluates or _due(step, cfg.schedule.save_every) or step >= total)


def _eval(group, table, cfg: DPOConfig) -> dict[str, float]:
    metrics = evaluate(group, "eval", table, cfg.schedule.eval_batch_size, cfg.ray.call_timeout_s)
    return {f"eval/{k}": v for k, v in metrics.items() if k not in ("lr", "grad_norm")}

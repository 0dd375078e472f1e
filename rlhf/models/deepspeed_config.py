"""Trainer settings as a typed dataclass, and the DeepSpeed config dict built from them.

DeepSpeed owns the optimizer (AdamW; DeepSpeedCPUAdam when the optimizer state is offloaded),
the learning-rate schedule (WarmupLR / WarmupDecayLR / WarmupCosineLR), gradient clipping, ZeRO
partitioning and offload. This module only translates our settings into its config; nothing
here imports DeepSpeed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rlhf.cluster.resources import check_custom_resources
from rlhf.config import ConfigError


@dataclass
class TrainerConfig:
    """How the policy trainer ranks train (one section of a job's config)."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False  # optimizer state and step on the CPU (DeepSpeedCPUAdam)
    offload_params: bool = False  # parameters on the CPU between uses (ZeRO-3 only)
    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    lr_scheduler: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0  # optimizer steps of linear warmup from 0 (DeepSpeed: 0 or >= 2)
    total_steps: int | None = None  # optimizer steps in the run; needed by cosine and linear
    min_lr_ratio: float = 0.0  # cosine: the final lr as a fraction of lr
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    micro_batch_size: int = 1  # prompts per rank per forward/backward pass
    gradient_accumulation_steps: int = 1  # micro batches per rank per optimizer step
    bf16: bool = False  # bf16 weights and compute (fp32 master weights kept by DeepSpeed)
    gradient_checkpointing: bool = False
    # One row per prompt with its K responses after it: the prompt runs once, not K times.
    # Needs an attention that takes a 4D mask (eager, sdpa); others fall back to K sequences.
    share_prompt: bool = True
    trust_remote_code: bool = False
    seed: int = 0
    num_ranks: int = 1  # data-parallel trainer actors
    num_cpus_per_rank: float = 1.0
    num_gpus_per_rank: float = 0.0
    # Custom Ray resources of each rank, e.g. {node_b: 0.01}: ranks go to nodes that have them.
    resources_per_rank: dict[str, float] = field(default_factory=dict)
    # How the ranks' placement group spreads over nodes: PACK fills few nodes, SPREAD uses many,
    # STRICT_PACK one node only, STRICT_SPREAD one rank per node.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"

    def validate(self) -> None:
        """Raises ConfigError for impossible combinations, naming the keys involved."""
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError(
                f"offload_params needs zero_stage: 3 (got zero_stage: {self.zero_stage}); "
                "only ZeRO-3 partitions parameters. Set zero_stage: 3 or offload_params: false"
            )
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError(
                "offload_optimizer needs zero_stage 1, 2 or 3 (got 0): DeepSpeed offloads the "
                "optimizer state through ZeRO"
            )
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas must lie in [0, 1), got {list(self.betas)}")
        for key in ("micro_batch_size", "gradient_accumulation_steps", "num_ranks"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.warmup_steps < 0 or self.warmup_steps == 1:
            raise ConfigError(
                f"warmup_steps must be 0 or at least {DS_MIN_WARMUP} (DeepSpeed's schedulers warm "
                f"up over 2 or more steps; 1 would run the first step at lr 0), got "
                f"{self.warmup_steps}"
            )
        if self.grad_clip < 0:
            raise ConfigError(f"grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip}")
        if self.lr_scheduler != "constant":
            if self.total_steps is None:
                raise ConfigError(
                    f"lr_scheduler: {self.lr_scheduler} decays over total_steps; set total_steps "
                    "(optimizer steps of the run)"
                )
            if self.total_steps <= self.warmup_steps:
                raise ConfigError(
                    f"total_steps ({self.total_steps}) must be larger than warmup_steps "
                    f"({self.warmup_steps})"
                )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.num_cpus_per_rank <= 0 and self.num_gpus_per_rank <= 0:
            raise ConfigError("each rank needs some resources: num_cpus_per_rank > 0")
        check_custom_resources(self.resources_per_rank, "resources_per_rank")
        if self.num_gpus_per_rank > 1:
            raise ConfigError(
                f"num_gpus_per_rank is {self.num_gpus_per_rank}: a data-parallel rank drives one "
                "device; use more ranks instead"
            )

    @property
    def prompts_per_step(self) -> int:
        """Prompts in one optimizer step, all ranks together (the global batch)."""
        return self.micro_batch_size * self.gradient_accumulation_steps * self.num_ranks


def check_device(config: TrainerConfig, device: str) -> None:
    """Raises ConfigError when the device and the per-rank GPU count disagree."""
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and config.num_gpus_per_rank <= 0:
        raise ConfigError("device 'cuda' needs num_gpus_per_rank > 0 (e.g. 1)")
    if device == "cpu" and config.num_gpus_per_rank > 0:
        raise ConfigError(
            f"device 'cpu' with num_gpus_per_rank {config.num_gpus_per_rank}: set it to 0"
        )


DS_MIN_WARMUP = 2  # DeepSpeed's schedulers warm up over at least 2 steps


def scheduler_start(config: TrainerConfig) -> int:
    """The scheduler iteration the first optimizer step uses (the trainer sets it at start).

    DeepSpeed's schedulers begin at iteration -1 and step after each update, so their first
    two updates share one lr; starting at 0 fixes that. Without warmup we start past DeepSpeed's
    minimal warmup instead (``total_num_steps`` is shifted to match), so the first step runs at
    the full lr. Step k then uses lr * k / W during a warmup of W steps, as in most trainers.
    """
    return 0 if config.warmup_steps else DS_MIN_WARMUP


def _scheduler(config: TrainerConfig) -> dict[str, Any] | None:
    """DeepSpeed's scheduler section; None for a constant lr without warmup."""
    warmup = max(config.warmup_steps, DS_MIN_WARMUP)
    common = {"warmup_num_steps": warmup, "warmup_type": "linear"}
    if config.lr_scheduler == "constant":
        if config.warmup_steps == 0:
            return None
        params = {"warmup_min_lr": 0.0, "warmup_max_lr": config.lr, **common}
        return {"type": "WarmupLR", "params": params}
    total = config.total_steps + scheduler_start(config)
    if config.lr_scheduler == "linear":
        params = {"warmup_min_lr": 0.0, "warmup_max_lr": config.lr, **common}
        return {"type": "WarmupDecayLR", "params": {"total_num_steps": total, **params}}
    params = {"warmup_min_ratio": 0.0, "cos_min_ratio": config.min_lr_ratio, **common}
    return {"type": "WarmupCosineLR", "params": {"total_num_steps": total, **params}}


def _zero(config: TrainerConfig) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": config.zero_stage}
    if config.zero_stage in (0, 1):
        # Our train step accumulates gradients locally and reduces at step() (see trainer);
        # DeepSpeed allows overlap_comm there only with stage 2 and 3.
        zero["overlap_comm"] = False
    if config.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if config.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    return zero


def deepspeed_config(config: TrainerConfig) -> dict[str, Any]:
    """The DeepSpeed config dict for ``deepspeed.initialize(config=...)``.

    Gradient accumulation is ours: a train step runs all its micro batches' backward passes and
    then one ``engine.step()``, so DeepSpeed runs with ``managed_gradient_accumulation: false``
    (each ``step()`` is a boundary); ``gradient_accumulation_steps`` here only sizes the batch.
    """
    config.validate()
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "train_batch_size": config.prompts_per_step,
        "managed_gradient_accumulation": False,
        "gradient_clipping": config.grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": config.lr,
                "betas": list(config.betas),
                "eps": config.eps,
                "weight_decay": config.weight_decay,
            },
        },
        "zero_optimization": _zero(config),
        "bf16": {"enabled": config.bf16},
        "fp16": {"enabled": False},
        "steps_per_print": 2**31 - 1,  # the driver logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }
    scheduler = _scheduler(config)
    if scheduler is not None:
        ds["scheduler"] = scheduler
    return ds

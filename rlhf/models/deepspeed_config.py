"""Trainer settings as typed dataclasses, and the DeepSpeed config dict built from them.

``TrainerConfig`` holds what every DeepSpeed group shares (optimizer, schedule, ZeRO, resources);
each job's trainer section adds the batch unit it trains on: ``PreferenceTrainerConfig``
(offline and online DPO: prompts, each with its K responses) and ``PPOTrainerConfig`` (PPO's
policy and critic: sequences). What a whole job decides once (its seed, the model's dtype and
remote code) reaches the ranks as a ``ModelLoad``, not as trainer keys.

DeepSpeed owns the optimizer (AdamW; DeepSpeedCPUAdam when the optimizer state is offloaded),
the learning-rate schedule (WarmupLR / WarmupDecayLR / WarmupCosineLR), gradient clipping, ZeRO
partitioning and offload. This module only translates our settings into its config; nothing
here imports DeepSpeed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from rlhf.cluster.resources import check_custom_resources
from rlhf.config import ConfigError

# Keys that moved to the job's top level: one key per decision.
_JOB_LEVEL_KEYS = {
    "seed": "the job's top-level seed seeds the trainers too; set seed",
    "trust_remote_code": "model.trust_remote_code covers the trainers too; set it there",
    "bf16": (
        "set model.dtype: bfloat16 (engines run in bf16, trainers train in bf16 with fp32 "
        "master weights)"
    ),
}


@dataclass(frozen=True)
class ModelLoad:
    """How every rank of a trainer group loads its model; set once per job, from the job's
    ``model.dtype``, ``model.trust_remote_code`` and ``seed`` (``ModelConfig.for_trainers``).

    float16 trains in fp32: DeepSpeed's fp16 mode needs loss scaling, which we do not set up.
    """

    dtype: str = "float32"
    trust_remote_code: bool = False
    seed: int = 0

    @property
    def bf16(self) -> bool:
        """Whether the ranks train in bf16 (fp32 master weights kept by DeepSpeed)."""
        return self.dtype == "bfloat16"

    @property
    def train_dtype(self) -> str:
        """The dtype the ranks load the model's weights in."""
        return "bfloat16" if self.bf16 else "float32"


DEFAULT_LOAD = ModelLoad()  # float32, no remote code, seed 0: what a test or script starts with


@dataclass
class LoraSettings:
    """``trainer.lora``: train a LoRA adapter (PEFT) instead of every weight; ``r: 0`` is off.

    The adapter adds ``alpha / r * B @ A`` to each target module's weight (A: r x in, B: out x
    r, B starting at zero, so step 0 is the base model). ``target_modules`` are module names as
    PEFT matches them (``q_proj`` matches every ``...self_attn.q_proj``); None picks the
    architecture's attention projections (``rlhf.models.lora.default_target_modules``), and a
    name the model lacks is an error when the model loads.
    """

    r: int = 0  # the adapter's rank; 0: no adapter, every weight trains
    alpha: float = 16.0  # scaling numerator: the update is alpha / r * B @ A
    dropout: float = 0.0  # dropout on the adapter's input (0: step 0 equals the base model)
    target_modules: list[str] | None = None  # None: the architecture's default
    save_merged: bool = False  # also save base + adapter as a full model in model/merged/

    @property
    def enabled(self) -> bool:
        """Whether an adapter trains (r > 0)."""
        return self.r > 0

    def validate(self) -> None:
        if self.r < 0:
            raise ConfigError(f"r must be >= 0 (0 turns LoRA off), got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.alpha <= 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha}")
        if self.target_modules is not None and not [m for m in self.target_modules if m]:
            raise ConfigError(
                "target_modules is empty; name modules (e.g. [q_proj, v_proj]) or leave it "
                "unset for the architecture's default"
            )


@dataclass
class TrainerConfig:
    """How a group of DeepSpeed ranks trains: what every trainer section shares."""

    REMOVED_KEYS: ClassVar[dict[str, str]] = _JOB_LEVEL_KEYS

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
    gradient_checkpointing: bool = False
    num_ranks: int = 1  # data-parallel trainer actors
    num_cpus_per_rank: float = 1.0
    num_gpus_per_rank: float = 0.0
    # Custom Ray resources of each rank, e.g. {node_b: 0.01}: ranks go to nodes that have them.
    resources_per_rank: dict[str, float] = field(default_factory=dict)
    # How the ranks' placement group spreads over nodes: PACK fills few nodes, SPREAD uses many,
    # STRICT_PACK one node only, STRICT_SPREAD one rank per node.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    lora: LoraSettings = field(default_factory=LoraSettings)  # r: 0 (default) trains every weight

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
        if self.eps <= 0:
            raise ConfigError(f"eps must be > 0, got {self.eps}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        for key, value in (*self._batch_keys(), ("num_ranks", self.num_ranks)):
            if value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value}")
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
        for key in ("num_cpus_per_rank", "num_gpus_per_rank"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.num_cpus_per_rank <= 0 and self.num_gpus_per_rank <= 0:
            raise ConfigError("each rank needs some resources: num_cpus_per_rank > 0")
        check_custom_resources(self.resources_per_rank, "resources_per_rank")
        if self.num_gpus_per_rank > 1:
            raise ConfigError(
                f"num_gpus_per_rank is {self.num_gpus_per_rank}: a data-parallel rank drives one "
                "device; use more ranks instead"
            )

    def _batch_keys(self) -> tuple[tuple[str, int], ...]:
        """The section's batch-size keys and values (each must be >= 1)."""
        return ()

    @property
    def batch_shape(self) -> tuple[int, int]:
        """(micro batch per rank, micro batches per optimizer step) in the section's own unit;
        DeepSpeed's batch sizes."""
        return 1, 1


@dataclass
class PreferenceTrainerConfig(TrainerConfig):
    """The trainer of offline and online DPO: batches count prompts, each with its K responses."""

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        **_JOB_LEVEL_KEYS,
        "micro_batch_size": "renamed trainer.micro_batch_prompts (prompts per rank per pass)",
    }

    micro_batch_prompts: int = 1  # prompts (each with its K responses) per rank per pass
    gradient_accumulation_steps: int = 1  # micro batches per rank per optimizer step
    # One row per prompt with its K responses after it: the prompt runs once, not K times.
    # Needs an attention that takes a 4D mask (eager, sdpa); others fall back to K sequences.
    share_prompt: bool = True

    def _batch_keys(self) -> tuple[tuple[str, int], ...]:
        return (
            ("micro_batch_prompts", self.micro_batch_prompts),
            ("gradient_accumulation_steps", self.gradient_accumulation_steps),
        )

    @property
    def batch_shape(self) -> tuple[int, int]:
        return self.micro_batch_prompts, self.gradient_accumulation_steps

    @property
    def prompts_per_step(self) -> int:
        """Prompts in one optimizer step, all ranks together (the global batch)."""
        return self.micro_batch_prompts * self.gradient_accumulation_steps * self.num_ranks


@dataclass
class PPOTrainerConfig(TrainerConfig):
    """PPO's policy and critic trainers: batches count sequences (one sampled response each).

    The optimizer step is ``ppo.minibatch_size`` sequences, split over the ranks into micro
    batches of ``micro_batch_sequences``.
    """

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        **_JOB_LEVEL_KEYS,
        "micro_batch_size": "renamed micro_batch_sequences (sequences per rank per pass)",
        "gradient_accumulation_steps": (
            "has no effect in PPO: an optimizer step is ppo.minibatch_size sequences, in micro "
            "batches of micro_batch_sequences; remove it"
        ),
        "share_prompt": "has no effect in PPO: each sampled sequence is its own row; remove it",
    }

    micro_batch_sequences: int = 8  # sequences per rank per forward/backward pass

    def _batch_keys(self) -> tuple[tuple[str, int], ...]:
        return (("micro_batch_sequences", self.micro_batch_sequences),)

    @property
    def batch_shape(self) -> tuple[int, int]:
        return self.micro_batch_sequences, 1


def check_device(config: TrainerConfig, device: str, section: str = "trainer") -> None:
    """Raises ConfigError when the device and the per-rank GPU count of the trainer section
    ``section`` disagree."""
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu' or 'cuda', got {device!r}")
    gpus = config.num_gpus_per_rank
    if device == "cuda" and gpus <= 0:
        raise ConfigError(f"device: cuda needs {section}.num_gpus_per_rank > 0 (e.g. 1)")
    if device == "cpu" and gpus > 0:
        raise ConfigError(
            f"device: cpu with {section}.num_gpus_per_rank {gpus}: set it to 0, or use device: "
            "cuda on a machine with GPUs"
        )


DS_MIN_WARMUP = 2  # DeepSpeed's schedulers warm up over at least 2 steps


def scheduler_start(config: TrainerConfig) -> int:
    """The scheduler iteration the first optimizer step uses (the trainer sets it at start).

    DeepSpeed's schedulers begin at iteration -1 and step after each update, and their linear
    warmup gives iteration i the lr ``lr * i / W``. Starting at 1 gives step k (1-based) the lr
    ``lr * k / W`` of a warmup of W steps: the first step already learns (at 0 it would run at
    lr 0 and change nothing) and step W reaches the full lr, as in most trainers. Without warmup
    we start past DeepSpeed's minimal warmup instead, so the first step runs at the full lr.
    ``total_num_steps`` is shifted by the start in both cases.
    """
    return 1 if config.warmup_steps else DS_MIN_WARMUP


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


def deepspeed_config(config: TrainerConfig, load: ModelLoad = DEFAULT_LOAD) -> dict[str, Any]:
    """The DeepSpeed config dict for ``deepspeed.initialize(config=...)``; ``load.dtype``
    decides bf16.

    Gradient accumulation is ours: a train step runs all its micro batches' backward passes and
    then one ``engine.step()``, so DeepSpeed runs with ``managed_gradient_accumulation: false``
    (each ``step()`` is a boundary); ``gradient_accumulation_steps`` here only sizes the batch.
    """
    config.validate()
    micro, accumulation = config.batch_shape
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro * accumulation * config.num_ranks,
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
        "bf16": {"enabled": load.bf16},
        "fp16": {"enabled": False},
        "steps_per_print": 2**31 - 1,  # the driver logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }
    scheduler = _scheduler(config)
    if scheduler is not None:
        ds["scheduler"] = scheduler
    return ds

"""The config sections shared by every job (model, engines, sampling, Ray resources).

Each section is a dataclass with defaults that run on a 2-core laptop; YAML files in
``configs/`` and ``key.sub=value`` overrides change them. ``validate()`` holds the rules that
involve more than one field, and is called by :func:`rlhf.config.from_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlhf.cluster.resources import check_custom_resources
from rlhf.config import ConfigError
from rlhf.models.deepspeed_config import ModelLoad, TrainerConfig, check_device
from rlhf.models.vllm_engine import EngineSettings

EMBEDDED_MODEL = "embedded"


@dataclass
class ModelConfig:
    """Which model to train and sample: a Hugging Face directory / hub name, or ``embedded``."""

    path: str = EMBEDDED_MODEL  # "embedded": the project's own tiny model, built on first use
    # Engines (samplers, reference) run in this dtype; trainers train in bf16 (fp32 master
    # weights kept by DeepSpeed) for bfloat16, and in fp32 otherwise.
    dtype: str = "float32"
    # Off unless the user turns it on: remote code runs locally. Covers tokenizer, engines and
    # trainers (the reward model has its own: reward.trust_remote_code).
    trust_remote_code: bool = False

    def validate(self) -> None:
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype {self.dtype!r} is not one of float32, bfloat16, float16")

    def for_trainers(self, seed: int) -> ModelLoad:
        """How every trainer rank loads this model (the job's ``seed`` seeds its init)."""
        return ModelLoad(dtype=self.dtype, trust_remote_code=self.trust_remote_code, seed=seed)


@dataclass
class EngineConfig:
    """vLLM engine settings for samplers and the reference server."""

    max_model_len: int | None = None  # None: the model's own limit
    enforce_eager: bool = True
    tensor_parallel_size: int = 1
    # CPU: bytes of KV cache to reserve (vLLM refuses to start if more than is free).
    # GPU: set to null and use gpu_memory_utilization instead.
    kv_cache_memory_bytes: int | None = 64 * 2**20
    gpu_memory_utilization: float = 0.5
    num_cpus: float = 1.0  # Ray resources of each engine actor
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)  # custom ones, e.g. {node_b: 0.01}
    # GPU only: the engine sleeps (weights to CPU memory, KV cache freed) while the trainers it
    # is colocated with train, and wakes before it generates or scores (see ray.colocate).
    # vLLM's CPU build has no sleep mode, so a job with device: cpu rejects it.
    sleep_when_idle: bool = False

    def validate(self) -> None:
        if self.tensor_parallel_size < 1:
            raise ConfigError("tensor_parallel_size must be at least 1")
        if self.tensor_parallel_size > 1 and self.num_gpus > 0:
            raise ConfigError(
                f"tensor_parallel_size {self.tensor_parallel_size} with num_gpus {self.num_gpus}: "
                "vLLM's Ray executor starts one GPU worker per shard, so the engine actor holds "
                "none itself; set num_gpus: 0"
            )
        check_custom_resources(self.resources)
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError("gpu_memory_utilization must be in (0, 1]")
        for key in ("num_cpus", "num_gpus"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes <= 0:
            raise ConfigError(
                f"kv_cache_memory_bytes must be > 0 (or null for gpu_memory_utilization), got "
                f"{self.kv_cache_memory_bytes}"
            )
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ConfigError(
                f"max_model_len must be at least 1 (or null), got {self.max_model_len}"
            )

    def settings(self, model: ModelConfig, model_path: str, seed: int) -> EngineSettings:
        """The plain settings one engine starts with."""
        return EngineSettings(
            model=model_path,
            dtype=model.dtype,
            seed=seed,
            max_model_len=self.max_model_len,
            enforce_eager=self.enforce_eager,
            tensor_parallel_size=self.tensor_parallel_size,
            kv_cache_memory_bytes=self.kv_cache_memory_bytes,
            gpu_memory_utilization=self.gpu_memory_utilization,
            trust_remote_code=model.trust_remote_code,
            enable_sleep_mode=self.sleep_when_idle,
        )


@dataclass
class SamplingConfig:
    """How samplers draw responses."""

    n: int = 4  # K responses per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 48
    # Responses are at least this long (vLLM holds back the end-of-sequence token until then);
    # min_tokens = max_tokens gives every response the same length, as benchmarks want.
    min_tokens: int = 0

    def validate(self) -> None:
        if self.n < 1:
            raise ConfigError("n must be at least 1")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ConfigError(
                f"min_tokens must be between 0 and max_tokens ({self.max_tokens}), "
                f"got {self.min_tokens}"
            )
        if self.temperature < 0:
            raise ConfigError("temperature must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError("top_p must be in (0, 1]")


@dataclass
class RayConfig:
    """Where the job runs: a local Ray started by the driver, or an existing cluster."""

    # None: start a local Ray, or inside a Ray job (``rlhf submit``, ``ray job submit``) join the
    # job's cluster; "auto", host:port or ray://...: join that cluster.
    address: str | None = None
    num_cpus: int | None = 8  # logical CPUs of a local Ray (actors share the real cores)
    env_vars: dict[str, str] = field(default_factory=dict)  # for every actor
    # Reject a config the cluster cannot hold before any actor starts (rlhf.cluster.resources);
    # false on an autoscaling cluster, where nodes appear on demand.
    check_resources: bool = True
    # Fault tolerance (see rlhf/driver/retry.py): Ray restarts a sampler or reward actor whose
    # process died up to max_restarts times; a round's phase that lost an actor is run again up
    # to phase_retries times (samplers get the current weights back first).
    max_restarts: int = 3
    phase_retries: int = 2
    # Colocation groups (rlhf.cluster.colocation): roles that share one placement group, rank i
    # of each in bundle i, e.g. [[trainer, reference]]. Names: trainer, critic, samplers,
    # reference, reward (the ones the job starts).
    colocate: list[list[str]] = field(default_factory=list)
    # How long the driver waits for the job's actors to finish starting (loading models,
    # building DeepSpeed's ops) before it stops with an error naming the ones still starting.
    start_timeout_s: float = 900.0
    # The longest the driver waits for one call of a job (a training step, a chunk of reference
    # log-probs, a weight sync or the broadcast group forming, the sync probe, a checkpoint's
    # save or restore, the final save) and the timeout of the weight group's
    # collectives: past it the round stops with an error naming the actors still busy. A rank
    # that dies is named at once (rlhf.driver.retry.bounded_get). Raise it for large models.
    call_timeout_s: float = 600.0

    def validate(self) -> None:
        for key in ("start_timeout_s", "call_timeout_s"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("max_restarts", "phase_retries"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(
                f"num_cpus must be at least 1 (or null: all cores), got {self.num_cpus}"
            )


def check_job(cfg: object) -> None:
    """The checks every training job's config runs once its sections are read: each trainer
    section's GPUs against the job's ``device`` (``trainer``; PPO's ``critic`` too), and the
    reference's backend against the job (:func:`check_reference_backend`)."""
    for name, value in vars(cfg).items():
        if isinstance(value, TrainerConfig):
            check_device(value, cfg.device, name)
    critic = getattr(cfg, "critic", None)
    if isinstance(critic, TrainerConfig) and critic.lora.enabled:
        raise ConfigError(
            f"critic.lora.r is {critic.lora.r}: the critic trains in full (its value head "
            "starts fresh); set critic.lora.r: 0 (trainer.lora adapts the policy)"
        )
    if hasattr(cfg, "reference"):
        check_reference_backend(cfg)


def lora_rank(cfg: Any) -> int:
    """The rank of the policy's LoRA adapter (``trainer.lora.r``; 0: no adapter)."""
    return cfg.trainer.lora.r


def adapter_sync(cfg: Any) -> bool:
    """True when only the policy's LoRA adapter goes to the samplers at each sync (an online
    job with ``trainer.lora.r > 0`` and ``samplers.lora_sync: adapter``)."""
    samplers = getattr(cfg, "samplers", None)
    return samplers is not None and lora_rank(cfg) > 0 and samplers.lora_sync == "adapter"


def reference_backend(cfg: Any) -> str:
    """What serves the job's reference: ``reference.backend``, or when unset, ``base`` (the
    samplers' engines without the adapter) where :func:`adapter_sync` holds, else ``vllm``."""
    if cfg.reference.backend is not None:
        return cfg.reference.backend
    return "base" if adapter_sync(cfg) else "vllm"


def check_reference_backend(cfg: Any) -> None:
    """``reference.backend: base`` needs the samplers to hold the base model and the adapter
    apart: an online job (samplers), LoRA (``trainer.lora.r > 0``), ``samplers.lora_sync:
    adapter``; and it has no engine of its own to put to sleep."""
    if reference_backend(cfg) != "base":
        return
    why = None
    if not hasattr(cfg, "samplers"):
        why = "this job has no samplers (offline DPO): use vllm or hf"
    elif lora_rank(cfg) == 0:
        why = "trainer.lora.r is 0, so the samplers hold the trained policy: set trainer.lora.r"
    elif not adapter_sync(cfg):
        why = "samplers.lora_sync is merged, so the samplers hold base + adapter merged"
    elif cfg.reference.engine.sleep_when_idle:
        why = "reference.engine.sleep_when_idle is set, and it has no engine of its own"
    if why is not None:
        raise ConfigError(
            f"reference.backend: base (the samplers' engines score the base model) but {why}"
        )

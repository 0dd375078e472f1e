"""What every online loop (online DPO, PPO) shares: the samplers' settings, the weight sync
from the policy's trainer group to the sampler engines, the metrics of a round's samples, and the
timer of a round's phases."""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import ray

from rlhf.config import ConfigError
from rlhf.driver.common import start_reward, start_samplers
from rlhf.driver.reference import SamplersReference
from rlhf.driver.retry import bounded_get, named_actors, ranks
from rlhf.driver.rollout import ScoredGroup, actor_scorer
from rlhf.driver.setup import start_reference
from rlhf.driver.sync_probe import SyncProbeConfig
from rlhf.driver.weight_sync import open_adapter_sync, open_broadcast
from rlhf.schema import EngineConfig, SamplingConfig, adapter_sync, lora_rank, reference_backend

log = logging.getLogger(__name__)


@dataclass
class SamplersConfig:
    """The vLLM sampler engines that generate from the current policy."""

    num_engines: int = 1
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # How new weights reach the engines: broadcast (a process group from trainer rank 0: gloo on
    # CPUs, NCCL on GPUs, untested here; see rlhf.driver.weight_sync; 1.7x faster than the object
    # store here) or object_store (the trainer's state dict through Ray's object store).
    sync: Literal["broadcast", "object_store"] = "broadcast"
    # With LoRA (trainer.lora.r > 0): adapter (only the adapter's tensors travel, the engines
    # serve it on their base weights; rlhf.driver.weight_sync.AdapterSync) or merged (base +
    # adapter merged and sent whole by ``sync``, for engines or models where vLLM cannot serve
    # the adapter).
    lora_sync: Literal["adapter", "merged"] = "adapter"
    # After every sync, a sampler and trainer rank 0 score fixed sequences; a difference above
    # the tolerance stops the round (rlhf.driver.sync_probe). Also the round's mismatch KL.
    sync_probe: SyncProbeConfig = field(default_factory=SyncProbeConfig)

    def validate(self) -> None:
        if self.num_engines < 1:
            raise ConfigError(f"num_engines must be at least 1, got {self.num_engines}")
        if self.sync == "broadcast" and self.engine.tensor_parallel_size > 1:
            raise ConfigError(
                "samplers.sync=broadcast serves engines with one worker; "
                f"samplers.engine.tensor_parallel_size is {self.engine.tensor_parallel_size}"
            )


def start_rollout_actors(cfg, model_path: str, scope, placements: dict) -> tuple[list, Any, Any]:
    """The actors every online round samples and scores with: (samplers, reference, reward).

    ``placements``: the ``ray.colocate`` placement of each role (``place_colocated``); the
    actors end with ``scope``. ``reward`` is the reward actor behind a ``GroupScorer``.
    """
    if lora_rank(cfg) > 0 and not adapter_sync(cfg):
        log.warning(
            "samplers.lora_sync: merged: every sync sends base + adapter merged, the whole "
            "model's weights, and the samplers serve them as a plain model"
        )
    if reference_backend(cfg) != "base":
        reference = scope.own(start_reference(cfg, model_path, placements.get("reference")))
    samplers = scope.own(
        start_samplers(
            cfg.samplers.num_engines,
            cfg.samplers.engine,
            cfg.model,
            model_path,
            cfg.seed,
            cfg.ray,
            placements.get("samplers"),
            lora=sampler_lora(cfg, model_path),
        )
    )
    if reference_backend(cfg) == "base":  # no server: the samplers score without the adapter
        reference = SamplersReference(samplers)
    reward_actor = scope.own(start_reward(cfg.reward, cfg.ray, placements.get("reward")))
    reward = actor_scorer(reward_actor, cfg.ray.call_timeout_s)
    return samplers, reference, reward


def sampler_lora(cfg, model_path: str) -> dict[str, Any] | None:
    """The samplers' LoRA settings (``EngineSettings`` fields) when they take the adapter
    (``rlhf.schema.adapter_sync``), else None: the largest rank and the adapted modules, as
    the trainers resolve them (``trainer.lora.target_modules`` or the architecture's default,
    read from the model's config alone)."""
    if not adapter_sync(cfg):
        return None
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlhf.models.lora import target_modules

    remote = cfg.model.trust_remote_code
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=remote)
    with torch.device("meta"):  # the layers' names, no weights
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=remote)
    modules = tuple(target_modules(model, cfg.trainer.lora))
    return {"max_lora_rank": lora_rank(cfg), "lora_target_modules": modules}


def sync_weights(
    group,
    samplers: list,
    reference=None,
    version: int | None = None,
    timeout_s: float = 600.0,
) -> int:
    """Pushes the trainer's weights into every sampler (and the reference, if it moves);
    returns the bytes of one copy of the weights.

    With a broadcast group open for ``group`` (``samplers.sync=broadcast``) and these
    receivers, trainer rank 0 broadcasts them; otherwise they go into the object store once and
    every engine reads the same copy. ``version`` labels them in the samplers (see
    ``Sampler.generate``'s ``weights_version``). Every wait is bounded by ``timeout_s``
    (``ray.call_timeout_s``; the broadcast has its own, set when it opened).
    """
    adapter = open_adapter_sync(group)  # LoRA: the adapter alone (samplers.lora_sync: adapter)
    if adapter is not None:
        return adapter.sync(samplers, reference, version, timeout_s)
    broadcast = open_broadcast(group)
    if broadcast is not None and broadcast.serves(samplers, reference):
        return broadcast.sync(version)
    refs = group.call("state_dict_for_sync")
    weights = bounded_get(refs, ranks("trainer", len(refs)), timeout_s, "weight sync")[0]
    handle = ray.put(weights)
    refs = [sampler.load_weights.remote(handle, version) for sampler in samplers]
    names = list(named_actors("sampler", samplers))
    if reference is not None:
        refs.append(reference.load_weights.remote(handle))
        names.append("reference")
    bounded_get(refs, names, timeout_s, "weight sync")
    return sum(t.numel() * t.element_size() for t in weights.values())


def sample_metrics(split: str, groups: list[ScoredGroup], ref: list[list[float]]) -> dict:
    """Mean / max reward of the samples and KL(policy || reference) estimated on them.

    The k1 estimator: the mean over samples of log pi(y) - log pi_ref(y), unbiased for samples
    drawn from pi itself (temperature 1, top_p 1). Empty for no groups (a round that does not
    evaluate: ``eval_every``).
    """
    if not groups:
        return {}
    scores = [s for g in groups for s in g.scores]
    kl = [
        c.logprob - r
        for g, g_ref in zip(groups, ref, strict=True)
        for c, r in zip(g.completions, g_ref, strict=True)
    ]
    lengths = [len(c.token_ids) for g in groups for c in g.completions]
    return {
        f"{split}/reward/mean": statistics.mean(scores),
        f"{split}/reward/max": max(scores),
        f"{split}/reward/std": statistics.pstdev(scores),
        f"{split}/kl": statistics.mean(kl),
        f"{split}/response_length": statistics.mean(lengths),
    }


class PhaseTimer:
    """Wall time per named phase: ``with timer("train"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[phase] = self.seconds.get(phase, 0.0) + elapsed

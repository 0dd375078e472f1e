"""Sampler: a Ray actor that owns one vLLM engine and generates completions."""

from __future__ import annotations

import torch

from rlhf.models.vllm_engine import (
    Completion,
    EngineSettings,
    generate,
    start_engine,
    token_logprobs,
)
from rlhf.models.vllm_sync import push_weights


class Sampler:
    """Generates K completions per prompt from the current policy weights.

    Wrap with ``ray.remote`` (see ``actors.group``); the driver decides what to sample.
    """

    def __init__(self, settings: EngineSettings) -> None:
        self.llm = start_engine(settings)

    def generate(
        self,
        prompts: list[str],
        n: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 48,
        seed: int | None = None,
    ) -> list[list[Completion]]:
        """K = ``n`` completions for each prompt, grouped by prompt."""
        return generate(
            self.llm,
            prompts,
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seed,
        )

    def token_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """Per-token log-probs of given sequences under the engine's current weights."""
        return token_logprobs(self.llm, sequences)

    def load_weights(self, named_tensors: dict[str, torch.Tensor]) -> int:
        """Replaces the engine's weights with the trainer's (Hugging Face names)."""
        return push_weights(self.llm, named_tensors)

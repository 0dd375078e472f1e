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
from rlhf.models.vllm_sync import StaleWeightsError, push_weights


class Sampler:
    """Generates K completions per prompt from the current policy weights.

    Wrap with ``ray.remote`` (see ``actors.group``); the driver decides what to sample.
    The weights carry the version number the driver gave them (0: the initial model), so a
    sampler that Ray restarted, which is back at version 0, refuses to sample a newer policy.
    """

    def __init__(self, settings: EngineSettings) -> None:
        self.llm = start_engine(settings)
        self.weights_version: int | None = 0

    def generate(
        self,
        prompts: list[str],
        n: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 48,
        seed: int | None = None,
        weights_version: int | None = None,
    ) -> list[list[Completion]]:
        """K = ``n`` completions for each prompt, grouped by prompt.

        ``weights_version``: the version the driver last synced; StaleWeightsError if the engine
        holds another one (it was restarted since). None skips the check.
        """
        if weights_version is not None and weights_version != self.weights_version:
            raise StaleWeightsError(
                f"this sampler holds weights version {self.weights_version}, the driver expected "
                f"{weights_version}: it was restarted since the last sync"
            )
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

    def load_weights(
        self, named_tensors: dict[str, torch.Tensor], version: int | None = None
    ) -> int:
        """Replaces the engine's weights with the trainer's (Hugging Face names).

        ``version`` labels the new weights for :meth:`generate`'s check (None: unlabelled).
        """
        count = push_weights(self.llm, named_tensors)
        self.weights_version = version
        return count

    def sleep(self) -> None:
        """Frees the engine's GPU memory while others train (``engine.sleep_when_idle``; GPU)."""
        self.llm.sleep(level=1)

    def wake_up(self) -> None:
        """Takes the GPU memory back after :meth:`sleep`, before generating or loading weights."""
        self.llm.wake_up()

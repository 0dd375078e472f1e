"""Sampler: a Ray actor that owns one vLLM engine and generates completions."""

from __future__ import annotations

import torch

from rlhf.models.vllm_engine import (
    Completion,
    EngineSettings,
    adapter_request,
    generate,
    response_logps,
    start_engine,
    token_logprobs,
)
from rlhf.models.vllm_sync import (
    StaleWeightsError,
    check_one_worker,
    join_weight_group,
    push_adapter,
    push_weights,
    receive_weights,
)
from rlhf.models.weight_broadcast import Manifest


class Sampler:
    """Generates K completions per prompt from the current policy weights.

    Wrap with ``ray.remote`` (see ``actors.group``); the driver decides what to sample.
    The weights carry the version number the driver gave them (0: the initial model), so a
    sampler that Ray restarted, which is back at version 0, refuses to sample a newer policy.

    With LoRA (``settings.max_lora_rank > 0``) the engine keeps the base model's weights and the
    policy is base + the adapter last loaded (:meth:`load_adapter`); log-probs can be asked with
    it or without it (the base model: a LoRA run's reference, served by the same engine).
    """

    def __init__(self, settings: EngineSettings) -> None:
        self.llm = start_engine(settings)
        self.settings = settings
        self.weights_version: int | None = 0
        self.weight_group_id: str | None = None  # the broadcast group joined (None: none yet)
        self.adapter_id = 0  # the LoRA adapter the policy is (0: none, the engine's weights)

    def generate(
        self,
        prompts: list[str],
        n: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 48,
        seed: int | None = None,
        weights_version: int | None = None,
        min_tokens: int = 0,
    ) -> list[list[Completion]]:
        """K = ``n`` completions for each prompt, grouped by prompt, each of ``min_tokens`` to
        ``max_tokens`` tokens.

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
            min_tokens=min_tokens,
            seed=seed,
            lora=self._lora(True),
        )

    def token_logprobs(self, sequences: list[list[int]], adapter: bool = True) -> list[list[float]]:
        """Per-token log-probs of given sequences under the current policy; ``adapter=False``:
        under the engine's weights alone (with LoRA, the base model)."""
        return token_logprobs(self.llm, sequences, self._lora(adapter))

    def response_logps(
        self, prompt_ids: list[list[int]], response_ids: list[list[int]], adapter: bool = True
    ) -> list[float]:
        """Summed log-probs of each response given its prompt, as :meth:`token_logprobs`."""
        return response_logps(self.llm, prompt_ids, response_ids, self._lora(adapter))

    def _lora(self, adapter: bool):
        return adapter_request(self.adapter_id) if adapter and self.adapter_id else None

    def merging_layers(self) -> int:
        """How many of the engine's layers compute the adapter with merged weights (on a CPU:
        every float32 adapted layer; ``rlhf.models.vllm_lora_linear``)."""
        return self.llm.collective_rpc("rlhf_merging_layers")[0]

    def load_adapter(
        self, tensors: dict[str, torch.Tensor], config: dict, version: int | None = None
    ) -> int:
        """Makes the policy base + this LoRA adapter (PEFT-named tensors, the adapter_config.json
        dict), under a new adapter id; the previous adapter is dropped. ``version`` as in
        :meth:`load_weights`. Returns how many tensors it holds."""
        new_id = self.adapter_id + 1
        drop = [self.adapter_id] if self.adapter_id else []
        count = push_adapter(self.llm, new_id, tensors, config, drop)
        self.adapter_id, self.weights_version = new_id, version
        return count

    def held_version(self) -> int | None:
        """The version of the weights this engine holds (0: the initial model; None: loaded
        unlabelled); the sync probe names it."""
        return self.weights_version

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

    def join_weight_group(
        self,
        address: tuple[str, int],
        group_id: str,
        rank: int,
        world: int,
        backend: str,
        manifest: Manifest,
    ) -> None:
        """Joins trainer rank 0's weight broadcast group (``rlhf.driver.weight_sync``)."""
        check_one_worker(self.settings)
        join_weight_group(self.llm, address, group_id, rank, world, backend, manifest)
        self.weight_group_id = group_id

    def weight_group(self) -> str | None:
        """The broadcast group this engine is in; None after a restart (the driver re-forms it)."""
        return self.weight_group_id

    def receive_weights(self, version: int | None = None) -> int:
        """:meth:`load_weights` from trainer rank 0's broadcast, which runs at the same time."""
        count = receive_weights(self.llm)
        self.weights_version = version
        return count

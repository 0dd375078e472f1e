"""Reference server: a Ray actor that scores given sequences under the frozen reference model.

The vLLM backend (default) uses ``prompt_logprobs`` on prompt + response token ids, which is
exact (it matches a Hugging Face forward pass to float precision); the ``hf`` backend runs the
Hugging Face model itself, for models or platforms vLLM does not serve. A server asked for
vLLM on a model that vLLM cannot serve here (``unservable_reason``) falls back to ``hf`` and
says why.
"""

from __future__ import annotations

import warnings
from typing import Literal

from rlhf.models.vllm_engine import EngineSettings, unservable_reason
from rlhf.models.weight_broadcast import Manifest, WeightReceiver


class ReferenceServer:
    """Owns one engine (vLLM or Hugging Face) holding the reference weights."""

    def __init__(self, settings: EngineSettings, backend: Literal["vllm", "hf"] = "vllm") -> None:
        if backend == "vllm" and (reason := unservable_reason(settings)) is not None:
            warnings.warn(
                f"reference: {reason}, so {settings.model} is served by the Hugging Face backend "
                "(set reference.backend: hf to choose it and silence this message)",
                stacklevel=2,
            )
            backend = "hf"
        self.backend = backend
        if backend == "vllm":
            from rlhf.models.vllm_engine import response_logps, start_engine, token_logprobs
            from rlhf.models.vllm_sync import (
                check_one_worker,
                join_weight_group,
                push_weights,
                receive_weights,
            )

            self.llm = llm = start_engine(settings)
            self._score = lambda sequences: token_logprobs(llm, sequences)
            self._response = lambda prompts, responses: response_logps(llm, prompts, responses)
            self._load = lambda weights: push_weights(llm, weights)
            self._join = lambda *group: (check_one_worker(settings), join_weight_group(llm, *group))
            self._receive = lambda: receive_weights(llm)
        elif backend == "hf":
            from rlhf.models.hf import (
                hf_response_logps,
                hf_token_logprobs,
                load_reference_model,
            )

            self.llm = None
            model = load_reference_model(settings)
            self._score = lambda sequences: hf_token_logprobs(model, sequences)
            self._response = lambda prompts, responses: hf_response_logps(model, prompts, responses)
            self._load = lambda weights: _load_hf(model, weights)
            receiver = WeightReceiver()
            self._join = receiver.join
            self._receive = lambda: _load_hf(model, dict(receiver.receive()))
        else:
            raise ValueError(
                f"reference backend {backend!r} is not one of 'vllm', 'hf' (with 'base', the "
                "samplers' engines serve the reference and no reference server starts)"
            )
        self.weight_group_id: str | None = None

    def backend_name(self) -> str:
        """The backend serving the reference: ``vllm``, or ``hf`` (chosen, or fallen back to)."""
        return self.backend

    def token_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """Per-token log-probs of tokens 1..L-1 of each sequence."""
        return self._score(sequences)

    def response_logps(
        self, prompt_ids: list[list[int]], response_ids: list[list[int]]
    ) -> list[float]:
        """Summed log-probs of each response given its prompt (response tokens only)."""
        return self._response(prompt_ids, response_ids)

    def load_weights(self, named_tensors: dict) -> int:
        """Moves the reference to new weights (e.g. the last round's policy)."""
        return self._load(named_tensors)

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
        self._join(address, group_id, rank, world, backend, manifest)
        self.weight_group_id = group_id

    def weight_group(self) -> str | None:
        """The broadcast group this server is in; None after a restart."""
        return self.weight_group_id

    def receive_weights(self) -> int:
        """:meth:`load_weights` from trainer rank 0's broadcast, which runs at the same time."""
        return self._receive()

    def sleep(self) -> None:
        """Frees the vLLM engine's GPU memory while others train (``sleep_when_idle``; GPU)."""
        if self.llm is None:
            raise RuntimeError("only the vllm backend can sleep; the hf backend keeps its model")
        self.llm.sleep(level=1)

    def wake_up(self) -> None:
        """Takes the GPU memory back after :meth:`sleep`, before scoring or loading weights."""
        if self.llm is None:
            raise RuntimeError("only the vllm backend can sleep; the hf backend keeps its model")
        self.llm.wake_up()


def _load_hf(model, weights: dict) -> int:
    """Loads trainer weights (tied weights appear once, hence not strict); returns how many."""
    model.load_state_dict(weights, strict=False)
    return len(weights)

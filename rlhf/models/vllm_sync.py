"""Pushing trained weights into a running vLLM engine.

vLLM runs this class's methods inside its worker (``LLM(worker_extension_cls=...)``), where the
model runner can reload weights in place; the driver calls them with ``llm.collective_rpc``.
This path works on the CPU and on a single GPU; on multi-GPU clusters vLLM's own weight-transfer
engines (NCCL) are the faster route.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

EXTENSION = "rlhf.models.vllm_sync.WeightSyncExtension"


class StaleWeightsError(RuntimeError):
    """An engine holds older weights than the driver expects: Ray restarted it since the last
    sync, so it is back at the initial model. The driver re-syncs it and asks again."""


class WeightSyncExtension:
    """Mixed into vLLM's worker. Method names are prefixed so they never clash with the worker's."""

    def rlhf_reload_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Loads Hugging Face-named tensors into the running model; returns how many."""
        tensors = list(named_tensors)
        self.model_runner.reload_weights(weights_iterator=iter(tensors))
        return len(tensors)


def push_weights(llm, named_tensors: dict[str, torch.Tensor]) -> int:
    """Reloads the engine's weights and drops KV blocks computed with the old ones."""
    counts = llm.collective_rpc("rlhf_reload_weights", args=(list(named_tensors.items()),))
    llm.reset_prefix_cache()
    return counts[0]

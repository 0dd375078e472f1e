"""Pushing trained weights into a running vLLM engine.

vLLM runs this class's methods inside its worker (``LLM(worker_extension_cls=...)``), where the
model runner can reload weights in place; the driver calls them with ``llm.collective_rpc``.
Two ways in: ``push_weights`` hands the engine a state dict (from Ray's object store), and
``join_weight_group`` / ``receive_weights`` take the weights from trainer rank 0's broadcast
(``rlhf.models.weight_broadcast``; gloo on CPUs, NCCL on GPUs, untested here).

With LoRA (``trainer.lora.r > 0``) the engine keeps the base weights and ``push_adapter`` adds
the trained adapter from memory (PEFT-named tensors and the ``adapter_config.json`` dict, no
file) under a new adapter id, which requests then name (``vllm_engine.adapter_request``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from rlhf.models.weight_broadcast import Manifest, WeightReceiver

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
        repack_shared_weights(self.model_runner.get_model())
        return len(tensors)

    def rlhf_join_weight_group(
        self, address: tuple[str, int], group_id: str, rank: int, world: int, backend: str, manifest
    ) -> None:
        """Joins the weight broadcast group (``WeightReceiver.join``)."""
        self.rlhf_receiver = getattr(self, "rlhf_receiver", None) or WeightReceiver()
        self.rlhf_receiver.join(address, group_id, rank, world, backend, manifest)

    def rlhf_receive_weights(self) -> int:
        """Receives one broadcast and loads it like ``rlhf_reload_weights``; returns how many."""
        tensors = self.rlhf_receiver.receive()
        self.model_runner.reload_weights(weights_iterator=iter(tensors))
        repack_shared_weights(self.model_runner.get_model())
        return len(tensors)

    def rlhf_add_adapter(
        self, adapter_id: int, tensors: dict[str, torch.Tensor], config: dict, drop: list[int]
    ) -> int:
        """Adds a LoRA adapter from memory under ``adapter_id`` (replacing one of that id) and
        removes the adapters ``drop``; returns how many tensors it holds."""
        from vllm.lora.lora_model import LoRAModel
        from vllm.lora.peft_helper import PEFTHelper

        manager = getattr(self.model_runner, "lora_manager", None)
        if manager is None:
            raise RuntimeError(
                "this engine was started without LoRA (EngineSettings.max_lora_rank)"
            )
        # What vLLM's own loader (WorkerLoRAManager._load_adapter) does with a directory's
        # adapter_config.json and adapter_model.safetensors, from the dict and tensors instead.
        peft = PEFTHelper.from_dict(
            {**config, "vllm_max_position_embeddings": manager.max_position_embeddings}
        )
        peft.validate_legal(manager.lora_config)
        cache = manager._adapter_manager  # the worker's adapters (vLLM has no public handle)
        mapper = getattr(cache.model, "hf_to_vllm_mapper", None)
        adapter = LoRAModel.from_lora_tensors(
            lora_model_id=adapter_id,
            # Copies: vLLM scales B by alpha / r in place, which would scale the caller's
            # tensors again on their next push (seen: an adapter pushed twice was 7 nats off).
            tensors={name: tensor.clone() for name, tensor in tensors.items()},
            peft_helper=peft,
            device="cpu",
            dtype=manager.lora_config.lora_dtype,
            model_vocab_size=manager.vocab_size,
            weights_mapper=None if mapper is None else mapper.get_rename_mapper(),
            skip_prefixes=getattr(cache.model, "lora_skip_prefixes", None),
        )
        if not adapter.loras:
            raise ValueError(
                f"none of the {len(tensors)} adapter tensors names a layer of this model "
                f"(first: {next(iter(tensors), None)!r}); expected PEFT names such as "
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
            )
        for old in [adapter_id, *drop]:
            manager.remove_adapter(old)
        cache.add_adapter(adapter)
        return len(tensors)

    def rlhf_serve_head_adapters(self) -> int:
        """Lets adapters on ``lm_head`` serve prompt log-probs too (``rlhf.models.vllm_lora_head``);
        returns how many heads carry adapters."""
        from rlhf.models.vllm_lora_head import serve_head_adapters

        return serve_head_adapters(self.model_runner.get_model())

    def rlhf_serve_linear_adapters(self) -> dict[str, int]:
        """Computes adapters on linear layers with merged weights or dense products instead of
        vLLM's per-token CPU kernels (``rlhf.models.vllm_lora_linear``); returns what it
        changed (nothing off the CPU)."""
        from rlhf.models.vllm_lora_linear import serve_linear_adapters

        return serve_linear_adapters(self.model_runner.get_model())

    def rlhf_merging_layers(self) -> int:
        """How many layers compute an adapter's batches with merged weights."""
        from rlhf.models.vllm_lora_linear import merging_layers

        return merging_layers(self.model_runner.get_model())


def repack_shared_weights(model: torch.nn.Module) -> int:
    """Processes again every layer whose weight another layer shares; returns how many.

    vLLM's CPU build packs a layer's weight for its matrix kernels when the layer is processed
    after loading. A reload processes the layers it loads, but a head tied to the embeddings
    (GPT-2, Qwen2) is never loaded itself: it would keep computing logits from the packed copy
    of the old weights, though its weight (the embeddings') holds the new values.
    """
    sharing: dict[int, list[torch.nn.Module]] = {}
    for module in model.modules():
        weight = module._parameters.get("weight")
        if weight is not None and hasattr(module, "quant_method"):
            sharing.setdefault(id(weight), []).append(module)
    repacked = [m for modules in sharing.values() if len(modules) > 1 for m in modules]
    for module in repacked:
        module.quant_method.process_weights_after_loading(module)
    return len(repacked)


def push_weights(llm, named_tensors: dict[str, torch.Tensor]) -> int:
    """Reloads the engine's weights and drops KV blocks computed with the old ones."""
    counts = llm.collective_rpc("rlhf_reload_weights", args=(list(named_tensors.items()),))
    llm.reset_prefix_cache()
    return counts[0]


def push_adapter(
    llm, adapter_id: int, tensors: dict[str, torch.Tensor], config: dict, drop: list[int] = ()
) -> int:
    """Adds a LoRA adapter from memory as ``adapter_id`` and removes the adapters ``drop``."""
    counts = llm.collective_rpc("rlhf_add_adapter", args=(adapter_id, tensors, config, list(drop)))
    llm.reset_prefix_cache()
    return counts[0]


def join_weight_group(
    llm,
    address: tuple[str, int],
    group_id: str,
    rank: int,
    world: int,
    backend: str,
    manifest: Manifest,
) -> None:
    """Makes the engine's worker rank ``rank`` of the weight group (one worker per engine)."""
    llm.collective_rpc(
        "rlhf_join_weight_group", args=(address, group_id, rank, world, backend, manifest)
    )


def receive_weights(llm) -> int:
    """Loads the weights trainer rank 0 broadcasts now; drops KV blocks of the old ones."""
    counts = llm.collective_rpc("rlhf_receive_weights")
    llm.reset_prefix_cache()
    return counts[0]


def check_one_worker(settings) -> None:
    """The broadcast gives each engine one rank: an engine split over workers is refused."""
    if settings.tensor_parallel_size > 1:
        raise ValueError(
            f"samplers.sync=broadcast serves engines with one worker; this one has "
            f"tensor_parallel_size={settings.tensor_parallel_size}: use samplers.sync=object_store"
        )

"""LoRA adapters on linear layers in vLLM's CPU build, at the speed of the plain model.

vLLM's CPU LoRA path (``PunicaWrapperCPU``, vLLM 0.32) applies adapters token by token: for
every adapted layer, output slice and forward step it copies each token's A and B out of the
adapter slots (``lora_a_stacked[token_slots]``, a [tokens, rank, in] gather) and multiplies them
one token at a time (``einsum("bi, boi -> bo")``). On the embedded model that made sampling with
an adapter on q/k/v/o take 1.4-2x the CPU time per token of sampling without one (r = 8 and 64,
64 prompts x 4 samples; merged as below: 1.0x).

The samplers name one adapter per call (the policy's, or none: the base model), so all tokens
of a batch use one adapter slot. ``serve_linear_adapters`` changes a running engine:

- a float32 layer (one worker, unquantized) computes a batch of one adapter with that adapter
  merged into its weight, ``x @ (W + B @ A).T``: one product through vLLM's own CPU kernel, as
  without LoRA. The merged weight is built when the batch's adapter first needs it and kept
  (one per layer, the last adapter used) until the slot's tensors change; W, which vLLM drops
  after packing it for its kernel, is read back once by passing the identity through the base
  layer. A batch without an adapter computes the base layer alone, exactly as before;
- other layers (e.g. bfloat16, where merging would round the small update away) and batches
  that mix adapters keep vLLM's path, except that the wrapper's ``add_lora_linear`` (what
  column-parallel layers such as q/k/v call; row-parallel ones such as o call its shrink and
  expand steps, left as they are) adds ``(x @ A.T * scale) @ B.T`` as two dense products per
  adapter over its tokens instead of the per-token gather. A token without an adapter (slot
  -1) takes nothing there; vLLM's gather reads slot -1 as the last slot's adapter.

Memory: each merged layer holds its base weight and one merged weight besides vLLM's packed
copy. On GPUs vLLM's own kernels stay (nothing is installed).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch


def serve_linear_adapters(model: torch.nn.Module) -> dict[str, int]:
    """Installs the paths above in a vLLM ``model``; returns how many CPU LoRA wrappers compute
    with ``add_lora_linear`` and how many layers merge adapters (all 0 off the CPU)."""
    from vllm.lora.layers.base_linear import BaseLinearLayerWithLoRA
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    layers = [
        layer
        for layer in model.modules()
        if isinstance(layer, BaseLinearLayerWithLoRA)
        and isinstance(getattr(layer, "punica_wrapper", None), PunicaWrapperCPU)
    ]
    wrappers = {id(layer.punica_wrapper): layer.punica_wrapper for layer in layers}
    for wrapper in wrappers.values():
        wrapper.rlhf_slots = (None, [])  # (the mapping's version, slot_tokens of it)
        wrapper.add_lora_linear = partial(add_lora_linear, wrapper)  # the instance's, first
    merging = [layer for layer in layers if can_merge(layer)]
    for layer in merging:
        layer.rlhf_base = None  # (vLLM's base kernel, the base weight W read through it)
        layer.rlhf_merged = None  # (base kernel, slot and versions, stand-in with W + B @ A)
        layer.apply = partial(apply_merged, layer, layer.apply)
    return {"wrappers": len(wrappers), "merged_layers": len(merging)}


def merging_layers(model: torch.nn.Module) -> int:
    """How many layers of a vLLM ``model`` merge adapters (installed by
    ``serve_linear_adapters``)."""
    return sum(1 for module in model.modules() if hasattr(module, "rlhf_merged"))


def can_merge(layer) -> bool:
    """Whether ``layer`` (a vLLM LoRA linear layer) computes its output as its base layer's
    plain float32 product plus the adapter's, so that a merged weight gives the same."""
    from vllm.lora.layers import (
        ColumnParallelLinearWithLoRA,
        MergedColumnParallelLinearWithLoRA,
        MergedQKVParallelLinearWithLoRA,
        QKVParallelLinearWithLoRA,
        ReplicatedLinearWithLoRA,
        RowParallelLinearWithLoRA,
    )
    from vllm.model_executor.layers.linear import (
        ColumnParallelLinear,
        ReplicatedLinear,
        RowParallelLinear,
        UnquantizedLinearMethod,
    )

    plain_layers = (
        ColumnParallelLinearWithLoRA,
        MergedColumnParallelLinearWithLoRA,
        QKVParallelLinearWithLoRA,
        MergedQKVParallelLinearWithLoRA,
        RowParallelLinearWithLoRA,
        ReplicatedLinearWithLoRA,
    )
    plain_forwards = (
        ColumnParallelLinear.forward,
        RowParallelLinear.forward,
        ReplicatedLinear.forward,
    )
    base = layer.base_layer
    return (
        type(layer) in plain_layers  # the sharded variants compute otherwise
        and type(base).forward in plain_forwards  # no custom kernel of a subclass
        and layer.tp_size == 1
        and isinstance(base.quant_method, UnquantizedLinearMethod)
        and base.params_dtype == torch.float32
        and hasattr(base, "cpu_linear")  # vLLM's CPU kernel, chosen when the weights loaded
    )


def batch_slot_tokens(wrapper) -> list[tuple[int, torch.Tensor | None]]:
    """``slot_tokens`` of the batch the wrapper's mapping describes now, worked out again only
    when the mapping changed: vLLM rewrites its token-to-slot buffer in place when a step's
    mapping differs from the last one's (and skips that when it does not), which bumps the
    buffer's version counter."""
    token_slots = wrapper.token_lora_indices  # a view of the buffer: the buffer's version
    key = (token_slots._version, token_slots.numel())
    if wrapper.rlhf_slots[0] != key:
        wrapper.rlhf_slots = (key, slot_tokens(token_slots))
    return wrapper.rlhf_slots[1]


def slot_tokens(token_slots: torch.Tensor) -> list[tuple[int, torch.Tensor | None]]:
    """(slot, token indices) for each adapter slot in ``token_slots`` (one slot per token, -1:
    no adapter), in slot order; the indices are None when the slot is every token's. Tokens of
    slot -1 are left out."""
    slots = token_slots.unique().tolist()
    if len(slots) == 1:
        return [(slots[0], None)] if slots[0] >= 0 else []
    return [(s, (token_slots == s).nonzero().squeeze(1)) for s in slots if s >= 0]


def apply_merged(layer, apply, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The LoRA layer's output for input ``x``: the base product alone when no token has an
    adapter, the merged weight's when all have the same one, else ``apply`` (vLLM's)."""
    slots = batch_slot_tokens(layer.punica_wrapper)
    base = layer.base_layer
    if not slots:
        return base.quant_method.apply(base, x, bias)
    if len(slots) > 1 or slots[0][1] is not None:
        return apply(x, bias)
    return base.quant_method.apply(merged_layer(layer, slots[0][0]), x, bias)


def merged_layer(layer, slot: int) -> torch.nn.Module:
    """A stand-in for ``layer.base_layer`` whose weight is W + B @ A of adapter ``slot`` (every
    output slice's), packed by vLLM for its CPU kernel like the base layer's."""
    kernel = layer.base_layer.cpu_linear  # replaced when base weights are loaded
    key = (slot, *(t._version for t in (*layer.lora_a_stacked, *layer.lora_b_stacked)))
    if layer.rlhf_merged is not None and layer.rlhf_merged[:2] == (kernel, key):
        return layer.rlhf_merged[2]
    merged = base_weight(layer).clone()
    start = 0
    slices = zip(layer.lora_a_stacked, layer.lora_b_stacked, layer.output_slices, strict=True)
    for a, b, width in slices:
        merged[start : start + width] += b[slot, 0].float() @ a[slot, 0].float()
        start += width
    stand_in = torch.nn.Module()
    stand_in.weight = torch.nn.Parameter(merged, requires_grad=False)
    layer.base_layer.quant_method.process_weights_after_loading(stand_in)
    layer.rlhf_merged = (kernel, key, stand_in)
    return stand_in


def base_weight(layer) -> torch.Tensor:
    """The base layer's weight W [out, in] (float32), read back through its packed kernel:
    the identity's product is W.T, exactly (one nonzero term per output)."""
    base = layer.base_layer
    if layer.rlhf_base is None or layer.rlhf_base[0] is not base.cpu_linear:  # weights reloaded
        identity = torch.eye(layer.input_size, dtype=torch.float32)
        weight = base.quant_method.apply(base, identity, None).T.contiguous()
        layer.rlhf_base = (base.cpu_linear, weight)
    return layer.rlhf_base[1]


def add_lora_linear(
    wrapper,
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a_stacked: tuple[torch.Tensor, ...],
    lora_b_stacked: tuple[torch.Tensor, ...],
    scale: float,
    output_slices: tuple[int, ...],
    *,
    buffer: Any = None,
    **kwargs: Any,
) -> None:
    """``y[:, slice i] += (x @ A_i.T * scale) @ B_i.T`` in place for each output slice i, with
    each token's adapter slot's A_i [slots, 1, rank, in] and B_i [slots, 1, out_i, rank]: vLLM's
    arithmetic (the shrink in float32, the expand in y's dtype) as dense products.

    ``y``: [tokens, sum(output_slices)] (or [1, tokens, ...]), the base layer's output; ``x``:
    [tokens, in], its input. ``buffer`` (vLLM's scratch space) is not needed."""
    x = x.view(-1, x.shape[-1])
    out = y.view(-1, y.shape[-1])
    for slot, tokens in batch_slot_tokens(wrapper):
        inputs = (x if tokens is None else x[tokens]).float()
        start = 0
        for a, b, width in zip(lora_a_stacked, lora_b_stacked, output_slices, strict=True):
            shrunk = (inputs @ a[slot, 0].float().T) * scale
            delta = shrunk.to(out.dtype) @ b[slot, 0].to(out.dtype).T
            target = out[:, start : start + width]
            if tokens is None:
                target += delta
            else:
                target[tokens] += delta
            start += width

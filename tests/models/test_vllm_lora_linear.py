"""Adapters on linear layers in vLLM's CPU build (rlhf.models.vllm_lora_linear) on stand-ins
for vLLM's LoRA layer and punica wrapper: hand-worked values, no engine. The real engine is
checked in tests/driver/test_lora_online.py (the sampler's log-probs with the adapter against
the trainer's, without it against the base model's, and that its layers merge the adapter)."""

from types import SimpleNamespace

import torch

from rlhf.models.vllm_lora_linear import (
    add_lora_linear,
    apply_merged,
    batch_slot_tokens,
    slot_tokens,
)

# A layer of input size 2 and two output slices (sizes 2 and 1, as q and k of a qkv layer):
# W = [[1, 0], [0, 1], [1, 1]]. Two adapter slots of max rank 2; slot 0 holds a rank-1 adapter
# with, for slice 0, A = [1, 0], B = [[0], [2]] and, for slice 1, A = [0, 1], B = [[3]]:
# B @ A = [[0, 0], [2, 0]] and [[0, 3]], so W + B @ A = [[1, 0], [2, 1], [1, 4]]. Slot 1 is
# empty (zeros). For x = [1, 2]: base [1, 2, 3], with slot 0's adapter [1, 4, 9].
W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
X = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
BASE = [1.0, 2.0, 3.0]
ADAPTED = [1.0, 4.0, 9.0]


def adapter_slots() -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    a = (torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2))  # [slots, 1, max rank, in]
    b = (torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 1, 2))  # [slots, 1, out_i, max rank]
    a[0][0, 0, 0] = torch.tensor([1.0, 0.0])
    b[0][0, 0, :, 0] = torch.tensor([0.0, 2.0])
    a[1][0, 0, 0] = torch.tensor([0.0, 1.0])
    b[1][0, 0, :, 0] = torch.tensor([3.0])
    return a, b


class Wrapper:
    """vLLM's punica wrapper as the code reads it: a token-to-slot buffer rewritten in place."""

    def __init__(self, token_slots: list[int]) -> None:
        self.buffer = torch.full((8,), 99)  # vLLM's buffer is longer than the batch
        self.length = 0
        self.rlhf_slots = (None, [])
        self.map(token_slots)

    def map(self, token_slots: list[int]) -> None:
        self.buffer[: len(token_slots)].copy_(torch.tensor(token_slots))
        self.length = len(token_slots)

    @property
    def token_lora_indices(self) -> torch.Tensor:
        return self.buffer[: self.length]


class PackedLinear:
    """vLLM's unquantized CPU linear method: packing drops the layer's weight and keeps a kernel
    (``cpu_linear``), through which ``apply`` computes."""

    def process_weights_after_loading(self, layer) -> None:
        packed = layer.weight.detach().clone()
        layer.cpu_linear = lambda x, weight, bias: x @ packed.T + (0 if bias is None else bias)
        layer.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)

    def apply(self, layer, x, bias=None):
        return layer.cpu_linear(x, layer.weight, bias)


def lora_layer(token_slots: list[int]) -> SimpleNamespace:
    base = torch.nn.Module()
    base.weight = torch.nn.Parameter(W.clone(), requires_grad=False)
    base.quant_method = PackedLinear()
    base.quant_method.process_weights_after_loading(base)
    a, b = adapter_slots()
    return SimpleNamespace(
        base_layer=base,
        punica_wrapper=Wrapper(token_slots),
        lora_a_stacked=a,
        lora_b_stacked=b,
        output_slices=(2, 1),
        input_size=2,
        rlhf_base=None,
        rlhf_merged=None,
    )


def vllms_apply(x, bias=None):
    raise AssertionError("a batch of one adapter or none must not reach vLLM's own path")


def test_slot_tokens_groups_tokens_by_adapter_and_leaves_out_slot_minus_one():
    assert slot_tokens(torch.tensor([1, 1, 1])) == [(1, None)]  # one adapter: every token
    assert slot_tokens(torch.tensor([-1, -1])) == []  # the base model: nothing to add
    mixed = slot_tokens(torch.tensor([0, -1, 1, 0]))
    assert [(slot, tokens.tolist()) for slot, tokens in mixed] == [(0, [0, 3]), (1, [2])]


def test_batch_slot_tokens_are_worked_out_again_only_when_the_mapping_is_rewritten():
    wrapper = Wrapper([1, 1])
    first = batch_slot_tokens(wrapper)
    assert first == [(1, None)] and batch_slot_tokens(wrapper) is first  # unchanged: kept
    wrapper.map([-1, -1])  # vLLM rewrites the buffer in place for a new mapping
    assert batch_slot_tokens(wrapper) == []
    wrapper.map([-1, -1, 0])  # a longer batch
    assert [(s, t.tolist()) for s, t in batch_slot_tokens(wrapper)] == [(0, [2])]


def test_dense_products_add_each_tokens_adapter_and_nothing_for_slot_minus_one():
    a, b = adapter_slots()
    y = X @ W.T
    add_lora_linear(Wrapper([0, -1]), y, X, a, b, 1.0, (2, 1))
    assert y.tolist() == [ADAPTED, BASE]
    y = X @ W.T
    add_lora_linear(Wrapper([0, 0]), y, X, a, b, 0.5, (2, 1))  # scale halves the update
    assert y.tolist() == [[1.0, 3.0, 6.0]] * 2
    y = X @ W.T
    add_lora_linear(Wrapper([1, 1]), y, X, a, b, 1.0, (2, 1))  # an empty slot adds zeros
    assert y.tolist() == [BASE, BASE]


def test_a_batch_of_one_adapter_computes_with_the_merged_weight():
    layer = lora_layer([0, 0])
    assert apply_merged(layer, vllms_apply, X).tolist() == [ADAPTED, ADAPTED]
    merged = layer.rlhf_merged[2]
    assert (
        apply_merged(layer, vllms_apply, X, torch.tensor([1.0, 0.0, 0.0])).tolist()
        == [[2.0, 4.0, 9.0]] * 2
    )  # the bias as given
    assert layer.rlhf_merged[2] is merged  # built once
    assert layer.rlhf_base[1].tolist() == W.tolist()  # W read back through the packed kernel


def test_no_adapter_is_the_base_layer_and_a_mixed_batch_is_vllms_path():
    layer = lora_layer([-1, -1])
    assert apply_merged(layer, vllms_apply, X).tolist() == [BASE, BASE]
    assert layer.rlhf_merged is None  # nothing merged for the base model
    layer.punica_wrapper.map([0, -1])
    assert apply_merged(layer, lambda x, bias=None: "vLLM's", X) == "vLLM's"


def test_the_merged_weight_follows_a_new_adapter_in_the_slot_and_reloaded_base_weights():
    layer = lora_layer([0, 0])
    apply_merged(layer, vllms_apply, X)
    layer.lora_b_stacked[1][0, 0, 0, 0] = 1.0  # slice 1's B becomes [[1]]: W + B @ A row 2 = [1, 2]
    assert apply_merged(layer, vllms_apply, X).tolist() == [[1.0, 4.0, 5.0]] * 2
    base = layer.base_layer  # new base weights loaded: W doubled, packed again
    base.weight = torch.nn.Parameter(2 * W, requires_grad=False)
    base.quant_method.process_weights_after_loading(base)
    assert apply_merged(layer, vllms_apply, X).tolist() == [[2.0, 6.0, 8.0]] * 2

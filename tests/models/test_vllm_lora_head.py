"""The LoRA output head's logits step (rlhf.models.vllm_lora_head) on a stand-in for vLLM's
``LogitsProcessorWithLoRA``: hand-worked values, no engine. The real engine is checked in
tests/driver/test_lora_online.py (an lm_head adapter's prompt log-probs against the trainer's)."""

from types import SimpleNamespace

import pytest
import torch

from rlhf.models.vllm_lora_head import head_logits, row_slots


def stand_in_head(request_slots: list[int]) -> SimpleNamespace:
    """A head with vocab 3 over hidden size 2: base logits = hidden @ W.T with W = [[1, 0],
    [0, 1], [1, 1]] and a padding row (vLLM pads the vocab; the result leaves it out); two
    adapter slots of rank 1 (max rank 2, its second row zero): slot 0 A = [1, 0],
    B = [0, 0, 1]; slot 1 A = [0, 1], B = [2, 0, 0]."""
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [9.0, 9.0]])
    a = torch.zeros(2, 1, 2, 2)  # [slots, 1, max rank, hidden]
    b = torch.zeros(2, 1, 3, 2)  # [slots, 1, vocab, max rank]
    a[0, 0, 0] = torch.tensor([1.0, 0.0])
    b[0, 0, :, 0] = torch.tensor([0.0, 0.0, 1.0])
    a[1, 0, 0] = torch.tensor([0.0, 1.0])
    b[1, 0, :, 0] = torch.tensor([2.0, 0.0, 0.0])
    base = SimpleNamespace(
        _apply_head=lambda lm_head, h, bias: h @ lm_head.weight.T,
        _gather_logits=lambda logits: logits,
        vocab_size=3,
    )
    return SimpleNamespace(
        base_layer=base,
        sharded_to_full_mapping_gpu=None,
        punica_wrapper=SimpleNamespace(sampler_indices=torch.tensor(request_slots)),
        lora_a_stacked=a,
        lora_b_stacked=b,
        lm_head=SimpleNamespace(weight=weight),
    )


HIDDEN = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
BASE = [[1.0, 2.0, 3.0], [3.0, 4.0, 7.0]]  # hidden @ W.T


def logits(request_slots: list[int]) -> list[list[float]]:
    head = stand_in_head(request_slots)
    return head_logits(head, HIDDEN.clone(), head.lm_head).tolist()


def test_each_sampled_row_takes_its_requests_adapter_and_slot_minus_one_none():
    # Row 0 in slot 0: + (h . [1, 0]) * [0, 0, 1] = + [0, 0, 1]; row 1 in slot 1: + 4 * [2, 0, 0].
    assert logits([0, 1]) == [[1.0, 2.0, 4.0], [11.0, 4.0, 7.0]]
    # Slot -1 is no adapter, not the last slot's (which would add 2 * [2, 0, 0] to row 0).
    assert logits([-1, 1]) == [[1.0, 2.0, 3.0], [11.0, 4.0, 7.0]]
    assert logits([-1, -1]) == BASE


def test_one_requests_prompt_positions_take_the_batchs_one_adapter():
    # Two prompt positions (rows) of a batch of three requests, all in slot 1: both rows.
    assert logits([1, 1, 1]) == [[5.0, 2.0, 3.0], [11.0, 4.0, 7.0]]
    assert logits([-1, -1, -1]) == BASE  # the base model's prompt log-probs
    assert logits([0]) == [[1.0, 2.0, 4.0], [3.0, 4.0, 10.0]]  # one request, two positions


def test_a_batch_mixing_adapters_in_prompt_positions_is_refused():
    assert row_slots(torch.tensor([0, 1]), 2).tolist() == [0, 1]
    with pytest.raises(RuntimeError, match=r"one adapter per batch.*\[-1, 0\]"):
        row_slots(torch.tensor([0, -1, 0]), 5)

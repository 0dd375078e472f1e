"""A LoRA adapter on the output head (``lm_head``) in vLLM, for prompt log-probs too.

vLLM wraps an adapted head's logits in ``LogitsProcessorWithLoRA``, which adds each adapter's
``B @ A`` to the logits of the rows it is given, one adapter slot per row taken from the batch's
*sampler* mapping: one entry per request. Prompt log-probs (``SamplingParams.prompt_logprobs``,
how the samplers score given sequences) ask for the logits of every prompt position of a request
instead, so the rows and the mapping disagree. vLLM 0.32's CPU kernels then fail on a batch of
several requests ("The expanded size of the tensor ... must match", vllm-project/vllm#29955) and
give a one-request batch the request's adapter by broadcasting; its GPU kernels drop the head's
delta from prompt log-probs (vllm-project/vllm#51594). The CPU kernels also read a request
without an adapter (slot -1) as the last slot's adapter instead of none.

``serve_head_adapters`` replaces the head's logits step in a running engine by ``head_logits``,
which applies the same tensors itself: a request's slot for all its rows when the rows are one
request's prompt positions, and no delta for slot -1. The samplers send one LoRA request (or
none) per call, so every request of a batch has the same slot; a batch that mixes slots in
prompt log-probs is refused rather than guessed.
"""

from __future__ import annotations

from functools import partial

import torch


def serve_head_adapters(model: torch.nn.Module) -> int:
    """Makes every adapted output head of a vLLM ``model`` compute its logits with
    ``head_logits``; returns how many heads (0: the adapters do not cover ``lm_head``)."""
    from vllm.lora.layers.logits_processor import LogitsProcessorWithLoRA

    heads = [m for m in model.modules() if isinstance(m, LogitsProcessorWithLoRA)]
    for head in heads:
        head._get_logits = partial(head_logits, head)  # the instance's, before the class's
    return len(heads)


def head_logits(
    head,
    hidden_states: torch.Tensor,
    lm_head: torch.nn.Module,
    embedding_bias: torch.Tensor | None = None,
    skip_gather: bool = False,
) -> torch.Tensor | None:
    """The logits of ``hidden_states`` [rows, hidden]: the base head's, plus, for each row whose
    request names an adapter, that adapter's head delta ``hidden @ A.T @ B.T`` (vLLM stores B
    scaled by alpha / r). ``head``: the engine's ``LogitsProcessorWithLoRA``."""
    if skip_gather:
        raise NotImplementedError("an lm_head adapter needs the gathered logits")
    base_head = getattr(lm_head, "base_layer", lm_head)
    logits = head.base_layer._apply_head(base_head, hidden_states, embedding_bias)
    logits = head.base_layer._gather_logits(logits)
    if logits is None:  # a tensor-parallel rank that does not hold the gathered logits
        return None
    if head.sharded_to_full_mapping_gpu is not None:
        logits = logits[:, head.sharded_to_full_mapping_gpu]  # index = token id
    slots = row_slots(head.punica_wrapper.sampler_indices, hidden_states.shape[0])
    for slot in slots.unique().tolist():
        if slot < 0:  # no adapter
            continue
        rows = slots == slot
        a = head.lora_a_stacked[slot, 0]  # [max rank, hidden], zero beyond the adapter's rank
        b = head.lora_b_stacked[slot, 0]  # [vocab, max rank]
        delta = (hidden_states[rows].float() @ a.float().T) @ b.float().T
        width = min(delta.shape[1], logits.shape[1])  # the logits may carry vocab padding
        logits[rows, :width] += delta[:, :width].to(logits.dtype)
    return logits[:, : head.base_layer.vocab_size]


def row_slots(request_slots: torch.Tensor, rows: int) -> torch.Tensor:
    """The adapter slot of each of ``rows`` logits rows, from the slot of each request
    (``request_slots``, -1: none). As many rows as requests: row i is request i's sampled
    position. Otherwise the rows are one request's prompt positions, and all requests must share
    one slot, which is then every row's."""
    if request_slots.numel() == rows:
        return request_slots
    distinct = request_slots.unique()
    if distinct.numel() != 1:
        raise RuntimeError(
            f"prompt log-probs with an lm_head adapter need one adapter per batch; this batch "
            f"mixes adapter slots {distinct.tolist()}: score each adapter's sequences in its "
            "own call"
        )
    return distinct.expand(rows)

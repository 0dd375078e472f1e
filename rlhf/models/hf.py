"""Hugging Face causal LMs: loading for training or scoring, and response log-probs.

The trainer and the ``hf`` reference backend both go through here, so the policy and the
reference compute log-probs the same way (same dtype handling, same masking by position).
Dropout is switched off at load time in the config, so ``model.train()`` is harmless.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from rlhf.algorithms import sequence_logps, target_logps
from rlhf.data.batch import SharedPromptRows, share_prompts

if TYPE_CHECKING:
    from rlhf.models.vllm_engine import EngineSettings

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a config string (``"float32"``, ``"bfloat16"``, ``"float16"``)."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPES)}") from None


def disable_dropout(config: PretrainedConfig) -> list[str]:
    """Sets every float ``*dropout*`` attribute of a model config (and its sub-configs) to 0.

    Returns the dotted names it changed. Policy and reference must both run without dropout:
    at step 0 the implicit rewards are then exactly 0 (DPO's ln 2 check).
    """
    changed = []
    for key, value in list(vars(config).items()):
        if isinstance(value, PretrainedConfig):
            changed += [f"{key}.{name}" for name in disable_dropout(value)]
        elif "dropout" in key and isinstance(value, float) and value != 0.0:
            setattr(config, key, 0.0)
            changed.append(key)
    return changed


def load_causal_lm(
    path: str | Path,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
) -> PreTrainedModel:
    """Loads a causal LM for training: dropout off, in train mode, on the CPU.

    Under DeepSpeed ZeRO-3, create the ``HfDeepSpeedConfig`` first: ``from_pretrained`` then
    partitions the weights while loading instead of materialising them on every rank.
    """
    return _load_for_training(
        AutoModelForCausalLM, path, dtype, trust_remote_code, gradient_checkpointing
    )


def load_value_model(
    path: str | Path,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
) -> PreTrainedModel:
    """A critic: the model's architecture with a one-output head on every position.

    Transformers' token-classification class of the architecture (e.g.
    ``LlamaForTokenClassification``) with ``num_labels=1``: the body comes from ``path`` (the
    SFT policy or a reward model), the head starts fresh. Dropout off, in train mode.
    """
    from transformers import AutoModelForTokenClassification

    return _load_for_training(
        AutoModelForTokenClassification,
        path,
        dtype,
        trust_remote_code,
        gradient_checkpointing,
        num_labels=1,
    )


def _load_for_training(
    auto_class,
    path: str | Path,
    dtype: str,
    trust_remote_code: bool,
    gradient_checkpointing: bool,
    **config_overrides,
) -> PreTrainedModel:
    config = AutoConfig.from_pretrained(
        path, trust_remote_code=trust_remote_code, **config_overrides
    )
    disable_dropout(config)
    model = auto_class.from_pretrained(
        path, config=config, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code
    )
    for module in model.modules():  # dropout hard-coded outside the config, if any
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.train()
    return model


# Where configs of the Transformers architectures keep their number of positions.
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(path: str | Path, trust_remote_code: bool = False) -> int | None:
    """The number of positions the model at ``path`` takes (None where its config has none)."""
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    config = getattr(config, "text_config", None) or config  # multimodal: its language model
    for key in _CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_reference_model(settings: EngineSettings) -> PreTrainedModel:
    """Loads a frozen reference model (eval mode, no grads) from an engine's settings."""
    model = load_causal_lm(settings.model, settings.dtype, settings.trust_remote_code)
    model.eval()
    model.requires_grad_(False)
    return model


def positions(attention_mask: Tensor) -> Tensor:
    """[N, T] position ids counting real tokens only (right for right and left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def batch_logps(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Response log-probs of N sequences in one forward pass.

    Args:
        model: a causal LM (or a DeepSpeed engine wrapping one).
        input_ids: [N, T] prompt + response tokens, padded (chosen and rejected together).
        attention_mask: [N, T] 1 on real tokens.
        loss_mask: [N, T] 1 on response tokens, chosen by position.

    Returns:
        logps: [N] float32, summed log-probs of the response tokens.
        token_logps: [N, T] float32, per-token log-probs aligned to ``input_ids`` (0 off-mask).

    The LM head runs only from the position before the earliest response token on (the model's
    ``logits_to_keep``): logits of the prompt positions all sequences share are never made.
    """
    logits, skip = response_logits(model, input_ids, attention_mask, loss_mask)
    logps, token_logps = sequence_logps(logits, input_ids[:, skip:], loss_mask[:, skip:])
    return logps, torch.nn.functional.pad(token_logps, (skip, 0))


def response_logits(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor
) -> tuple[Tensor, int]:
    """The logits a forward pass needs for the response tokens, and how many leading positions
    it left out.

    Shapes: input_ids, attention_mask, loss_mask [N, T] -> logits [N, T - skip, V], where
    ``skip`` is the position before the earliest response token of all N sequences (0 for a
    model without ``logits_to_keep``): the LM head never runs on the prompt positions every
    sequence shares. ``input_ids[:, skip:]`` and ``loss_mask[:, skip:]`` align with the logits.
    """
    skip = _shared_prompt_positions(loss_mask) if _keeps_logits(model) else 0
    kwargs = {"logits_to_keep": input_ids.shape[1] - skip} if skip else {}
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions(attention_mask),
        use_cache=False,
        **kwargs,
    ).logits
    return logits, skip


def shared_prompt_logps(model: torch.nn.Module, rows: SharedPromptRows) -> Tensor:
    """[N] float32 summed response log-probs of N sequences packed one row per prompt.

    The same values as ``batch_logps`` on the N ``prompt + response`` sequences, with the prompt
    run once per K responses instead of K times. The model must take a 4D attention mask
    (``shared_prompt_blocker`` says why not). The LM head starts at the shortest prompt's last
    position.
    """
    module = getattr(model, "module", model)
    skip = int(rows.token_predictor.min()) if _keeps_logits(model) and len(rows.token_row) else 0
    kwargs = {"logits_to_keep": rows.input_ids.shape[1] - skip} if skip else {}
    logits = model(
        input_ids=rows.input_ids,
        # sdpa takes a boolean mask (a quarter of float32's memory); eager adds a float one.
        attention_mask=rows.attention_mask(
            torch.bool if module.config._attn_implementation == "sdpa" else module.dtype
        ),
        position_ids=rows.position_ids,
        use_cache=False,
        **kwargs,
    ).logits
    values = target_logps(
        logits[rows.token_row, rows.token_predictor - skip],
        rows.input_ids[rows.token_row, rows.token_column],
    )
    # Summed in float64: a float32 running sum of a 256-token response (about -3,000) loses
    # about an ulp (2.4e-4) per token, 1.5e-3 in all; float64, then one rounding to float32.
    logps = torch.zeros(rows.num_sequences, dtype=torch.float64, device=values.device)
    return logps.index_add_(0, rows.token_sequence, values.double()).float()


def shared_prompt_blocker(model: torch.nn.Module) -> str | None:
    """Why the model cannot score ``SharedPromptRows``, or None when it can.

    The rows need an attention that takes a custom 4D mask (Hugging Face's eager and sdpa do;
    flash attention kernels take padding masks only). That mask replaces the model's own, so a
    model with sliding-window or chunked attention layers would silently lose its window, and
    remote code may treat a 4D mask its own way: both are refused.
    """
    module = _hf_module(model)
    if not type(module).__module__.startswith("transformers."):
        return f"{type(module).__name__} is not a Transformers class (how it masks is unknown)"
    config = module.config
    attention = getattr(config, "_attn_implementation", None)
    if attention not in ("eager", "sdpa"):
        return f"attention {attention!r} takes no 4D mask (eager and sdpa do)"
    local = [
        kind for kind in getattr(config, "layer_types", None) or () if kind != "full_attention"
    ]
    if local:
        return f"layer types {sorted(set(local))} would lose their window under a custom mask"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return f"sliding_window {config.sliding_window} would be lost under a custom mask"
    return None


def _shared_prompt_positions(loss_mask: Tensor) -> int:
    """How many leading positions no logits are needed for: the earliest response token's
    position minus one (the logits at position t - 1 predict token t)."""
    scored = loss_mask.bool().any(dim=0)
    if not scored.any():
        return 0
    return max(int(scored.nonzero()[0]) - 1, 0)


def _keeps_logits(model: torch.nn.Module) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (every recent HF causal LM does)."""
    return _forward_takes_logits_to_keep(type(_hf_module(model)))


def _hf_module(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside a DeepSpeed engine and a PEFT adapter wrapper, if any (a
    ``PeftModel`` passes its forward's keyword arguments on to it)."""
    module = getattr(model, "module", model)
    get_base_model = getattr(module, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else module


@functools.cache
def _forward_takes_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def token_values(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor
) -> Tensor:
    """A critic's value of each response token's state, aligned to ``input_ids``.

    The value of the token at position t is the head's output at t - 1: the state after the
    tokens before t, from which token t is chosen. [N, T] float32, 0 where ``loss_mask`` is 0.
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions(attention_mask),
        use_cache=False,
    ).logits[..., 0]
    values = torch.cat([out.new_zeros(out.shape[0], 1), out[:, :-1]], dim=1).float()
    return torch.where(loss_mask.bool(), values, torch.zeros_like(values))


def pad_right(sequences: list[list[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Right-pads token lists into ``(input_ids [N, T], attention_mask [N, T])``."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return input_ids, attention_mask


@torch.no_grad()
def hf_token_logprobs(
    model: torch.nn.Module, sequences: list[list[int]], batch_size: int = 32
) -> list[list[float]]:
    """Per-token log-probs of given token ids under a Hugging Face model (eval mode, no grad).

    The same contract as ``rlhf.models.vllm_engine.token_logprobs``: for each sequence of length
    L, L - 1 floats, the log-prob of token t given the tokens before it, for t = 1..L-1.
    """
    result: list[list[float]] = [[] for _ in sequences]
    for rows, _, token_logps in _scored_batches(model, sequences, [1] * len(sequences), batch_size):
        for row, i in enumerate(rows):
            result[i] = token_logps[row, 1 : len(sequences[i])].tolist()
    return result


@torch.no_grad()
def hf_response_logps(
    model: torch.nn.Module,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    batch_size: int = 32,
) -> list[float]:
    """Summed log-probs of each response given its prompt under a Hugging Face model.

    Consecutive responses to the same prompt share one forward row (``share_prompts``) when the
    model can (``shared_prompt_blocker``) and no prompt or response is empty; otherwise each
    response runs as its own ``prompt + response`` sequence.
    """
    if shared_prompt_blocker(model) is None and all(prompt_ids) and all(response_ids):
        return _shared_response_logps(model, prompt_ids, response_ids, batch_size)
    sequences = [p + r for p, r in zip(prompt_ids, response_ids, strict=True)]
    starts = [len(p) for p in prompt_ids]
    result = [0.0] * len(sequences)
    for rows, logps, _ in _scored_batches(model, sequences, starts, batch_size):
        for i, value in zip(rows, logps.tolist(), strict=True):
            result[i] = value
    return result


def _shared_response_logps(
    model: torch.nn.Module,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    batch_size: int,
) -> list[float]:
    """``hf_response_logps`` with each run of equal consecutive prompts in one row; rows in
    order of length, about ``batch_size`` responses per forward pass."""
    runs: list[range] = []  # the responses of each prompt run
    for i in range(len(prompt_ids)):
        if runs and prompt_ids[i] == prompt_ids[runs[-1].start]:
            runs[-1] = range(runs[-1].start, i + 1)
        else:
            runs.append(range(i, i + 1))
    width = [len(prompt_ids[r.start]) + sum(len(response_ids[i]) for i in r) for r in runs]
    runs = [runs[j] for j in sorted(range(len(runs)), key=width.__getitem__)]
    batches: list[list[range]] = []
    for run in runs:
        if not batches or sum(map(len, batches[-1])) >= batch_size:
            batches.append([])
        batches[-1].append(run)
    result = [0.0] * len(prompt_ids)
    with _scoring(model) as device:
        for batch in batches:
            rows = [i for r in batch for i in r]
            input_ids, _, loss_mask = _response_batch(
                [prompt_ids[i] + response_ids[i] for i in rows], [len(prompt_ids[i]) for i in rows]
            )
            group = torch.tensor([j for j, r in enumerate(batch) for _ in r])
            packed = share_prompts(input_ids, loss_mask, group).to(device)
            logps = shared_prompt_logps(model, packed).float().cpu()
            for i, value in zip(rows, logps.tolist(), strict=True):
                result[i] = value
    return result


def _scored_batches(
    model: torch.nn.Module, sequences: list[list[int]], starts: list[int], batch_size: int
) -> Iterator[tuple[list[int], Tensor, Tensor]]:
    """``(rows, logps, token_logps)`` (float32, on the CPU) of ``batch_size`` sequences at a
    time, in order of length (little padding); tokens before ``starts[i]`` are not scored.

    The model runs in eval mode and gets its mode back afterwards.
    """
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    with _scoring(model) as device:
        for first in range(0, len(order), batch_size):
            rows = order[first : first + batch_size]
            batch = _response_batch([sequences[i] for i in rows], [starts[i] for i in rows])
            logps, token_logps = batch_logps(model, *(t.to(device) for t in batch))
            yield rows, logps.float().cpu(), token_logps.float().cpu()


@contextlib.contextmanager
def _scoring(model: torch.nn.Module) -> Iterator[torch.device]:
    """The model in eval mode for the block (its mode restored after); yields its device."""
    was_training = model.training
    model.eval()
    try:
        yield next(model.parameters()).device
    finally:
        model.train(was_training)


def _response_batch(sequences: list[list[int]], starts: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ``(input_ids, attention_mask, loss_mask)`` [N, T]; the loss mask covers each
    sequence from ``starts[i]`` on (never position 0, which nothing predicts)."""
    input_ids, attention_mask = pad_right(sequences)
    begin = torch.tensor([max(start, 1) for start in starts])
    loss_mask = attention_mask * (torch.arange(input_ids.shape[1]) >= begin[:, None])
    return input_ids, attention_mask, loss_mask

"""Tokenizing checked preference rows once, into the Arrow table of :mod:`rlhf.data.table`.

The response tokens are exactly the tokens that follow the prompt in the joint sequence: the
prompt and ``prompt + response`` are tokenized, and the joint ids after the prompt's are the
response. When the tokenizer merges tokens across the join (the prompt's ids are then not a
prefix of the joint ids), the response is tokenized on its own and appended, and the report
counts it. Special tokens the tokenizer adds in front (BOS) go only at the start of the prompt;
every response ends with EOS. Chat messages go through the tokenizer's chat template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pyarrow as pa

from rlhf.data.errors import BadRow, DataError, DataReport, OnBadRow
from rlhf.data.records import PreferenceRecord
from rlhf.data.table import build_table

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PromptTruncation = Literal["error", "left"]

CHUNK_ROWS = 256  # rows tokenized per batched tokenizer call


@dataclass(frozen=True)
class _Rules:
    """The token-level rules of one tokenization run."""

    max_prompt_length: int
    max_length: int
    prompt_truncation: PromptTruncation
    eos: int
    bos: int | None
    prefix: list[int]  # what the tokenizer puts in front of plain text (its BOS)
    context_length: int | None  # the model's; None: not checked


@dataclass(frozen=True)
class _Rendered:
    """A row as text: the prompt, the response texts, and whether the text holds its specials."""

    record: PreferenceRecord
    prompt: str
    responses: list[str]
    add_prefix: bool  # plain text: prepend the tokenizer's BOS; chat: the template wrote it


def tokenize_preferences(
    records: Sequence[PreferenceRecord],
    tokenizer: PreTrainedTokenizerBase,
    report: DataReport,
    *,
    max_prompt_length: int,
    max_length: int,
    prompt_truncation: PromptTruncation = "error",
    on_bad_row: OnBadRow = "error",
    context_length: int | None = None,
) -> pa.Table:
    """Tokenizes ``records`` into a preference table; rows that cannot fit are bad rows.

    A prompt longer than ``max_prompt_length`` tokens is a bad row, or with
    ``prompt_truncation="left"`` keeps its last tokens (and its BOS). A response longer than
    ``max_length - len(prompt)`` is cut from its end (losing its EOS: it did not finish).
    With the model's ``context_length`` given, a prompt + response that still has more than
    ``context_length - 1`` tokens is a bad row too: vLLM scores a sequence by generating one
    token after it, which must fit the context as well.
    """
    if max_length <= max_prompt_length:
        raise ValueError(
            f"max_length ({max_length}) must exceed max_prompt_length ({max_prompt_length})"
        )
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos_token; every response must end with one")
    rules = _Rules(
        max_prompt_length,
        max_length,
        prompt_truncation,
        eos,
        tokenizer.bos_token_id,
        special_prefix(tokenizer),
        context_length,
    )
    source_rows: list[int] = []
    prompts: list[list[int]] = []
    responses: list[list[list[int]]] = []
    labels: list[bool | None] = []
    for start in range(0, len(records), CHUNK_ROWS):
        rendered = []
        for record in records[start : start + CHUNK_ROWS]:
            try:
                rendered.append(_render(record, tokenizer, report))
            except BadRow as error:
                report.bad_row(record.source_row, error, on_bad_row)
        prompt_ids = _encode(tokenizer, [r.prompt for r in rendered])
        joint_ids = _encode(tokenizer, [r.prompt + t for r in rendered for t in r.responses])
        position = 0
        for row, ids in zip(rendered, prompt_ids, strict=True):
            joints = joint_ids[position : position + len(row.responses)]
            position += len(row.responses)
            try:
                prompt, row_responses = _row_ids(row, ids, joints, tokenizer, report, rules)
            except BadRow as error:
                report.bad_row(row.record.source_row, error, on_bad_row)
                continue
            source_rows.append(row.record.source_row)
            prompts.append(prompt)
            responses.append(row_responses)
            labels.append(row.record.label)
    report.rows_kept = len(source_rows)
    unpaired = bool(records) and records[0].is_unpaired
    return build_table(source_rows, prompts, responses, report, labels if unpaired else None)


def special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids the tokenizer puts before a text's own tokens (usually ``[bos]``, or none)."""
    probe = "hello"
    plain = _encode(tokenizer, [probe])[0]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if plain and full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _render(
    record: PreferenceRecord, tokenizer: PreTrainedTokenizerBase, report: DataReport
) -> _Rendered:
    if not record.is_chat:
        return _Rendered(record, record.prompt, list(record.responses), add_prefix=True)
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"{report.where(record.source_row, 'prompt')}: chat messages need a tokenizer with "
            "a chat template, and this tokenizer has none; set tokenizer.chat_template or "
            "give prompts and responses as plain text"
        )
    prompt = _apply_template(tokenizer, record.prompt, "prompt", add_generation_prompt=True)
    texts = []
    for response, field in zip(record.responses, record.fields, strict=True):
        full = _apply_template(tokenizer, record.prompt + response, field)
        if not full.startswith(prompt):
            raise BadRow("chat template", field, _split_failure(response))
        texts.append(full[len(prompt) :])
    return _Rendered(record, prompt, texts, add_prefix=False)


def _split_failure(response: list[dict[str, str]]) -> str:
    """Why a chat response could not be split off its prompt's rendering."""
    role = response[0].get("role") if response else None
    if role is not None and role != "assistant":
        return (
            f"its first message has role {role!r}; a response is the assistant's turn (role "
            "'assistant'), the turn the prompt's generation prompt opens"
        )
    return (
        "the chat template renders the prompt differently once the response follows it, so the "
        "response cannot be split off (check its add_generation_prompt branch)"
    )


def _apply_template(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    field: str,
    add_generation_prompt: bool = False,
) -> str:
    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as error:  # jinja raises its own error types (and templates raise too)
        raise BadRow("chat template", field, f"the chat template failed: {error}") from None
    return text


def _row_ids(
    row: _Rendered,
    prompt_ids: list[int],
    joint_ids: list[list[int]],
    tokenizer: PreTrainedTokenizerBase,
    report: DataReport,
    rules: _Rules,
) -> tuple[list[int], list[list[int]]]:
    """The prompt ids and response ids of one row; report counters change only on success."""
    fields = row.record.fields
    fallbacks = 0
    responses = []
    for text, joint, field in zip(row.responses, joint_ids, fields, strict=True):
        if joint[: len(prompt_ids)] == prompt_ids:
            ids = joint[len(prompt_ids) :]
        else:  # the tokenizer merged across the join: keep the prompt's ids as they are
            ids = _encode(tokenizer, [text])[0]
            fallbacks += 1
        if not ids:
            raise BadRow("empty response", field, "the response has no tokens")
        if ids[-1] != rules.eos:  # a chat template may already end the turn with EOS
            ids = ids + [rules.eos]
        responses.append(ids)
    prompt = (rules.prefix if row.add_prefix else []) + prompt_ids
    truncated_prompt = len(prompt) > rules.max_prompt_length
    if truncated_prompt:
        if rules.prompt_truncation != "left":
            raise BadRow(
                "prompt too long",
                "prompt",
                f"prompt is {len(prompt)} tokens, more than max_prompt_length="
                f"{rules.max_prompt_length} (raise it, or set prompt_truncation='left')",
            )
        head = prompt[:1] if rules.bos is not None and prompt[0] == rules.bos else []
        prompt = head + prompt[len(prompt) - (rules.max_prompt_length - len(head)) :]
    budget = rules.max_length - len(prompt)
    truncated = sum(len(ids) > budget for ids in responses)
    responses = [ids[:budget] for ids in responses]
    if rules.context_length is not None:
        _check_context(prompt, responses, fields, rules.context_length)
    # Unpaired feedback: the mismatched completion may equal the row's own once truncated.
    for j in range(0 if row.record.is_unpaired else len(responses)):
        for i in range(j):
            if responses[i] == responses[j]:
                why = (
                    f"after truncation to max_length={rules.max_length} (raise max_length)"
                    if truncated
                    else "(the texts differ but tokenize the same)"
                )
                raise BadRow(
                    "identical responses", fields[j], f"same tokens as {fields[i]!r} {why}"
                )
    report.join_fallbacks += fallbacks
    report.truncated_prompts += truncated_prompt
    report.truncated_responses += truncated
    return prompt, responses


def _check_context(
    prompt: list[int], responses: list[list[int]], fields: Sequence[str], context_length: int
) -> None:
    """A :class:`BadRow` for the first response whose sequence the model cannot score."""
    most = context_length - 1  # vLLM generates one token after a scored sequence
    for ids, field in zip(responses, fields, strict=True):
        length = len(prompt) + len(ids)
        if length > most:
            raise BadRow(
                "longer than the model's context",
                field,
                f"prompt + response is {length} tokens; the model scores at most {most} (its "
                f"context length {context_length}, less the one token vLLM generates): set "
                f"data.max_length to {most} or less to cut such responses",
            )

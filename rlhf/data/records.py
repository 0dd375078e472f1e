"""Checks of one preference row, turning it into a :class:`PreferenceRecord`.

A check raises :class:`~rlhf.data.errors.BadRow` naming the field and what is wrong with it;
the reader turns that into an error or a counted skip. Scored rankings are sorted by score,
highest first; equal scores are ties, never a preference (:class:`Tied` drops the row).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rlhf.data.errors import BadRow, DataReport, OnBadRow

Message = dict[str, str]
Text = str | list[Message]  # a plain string, or chat messages
Ties = Literal["drop_row", "drop_response"]


@dataclass(frozen=True)
class PreferenceRecord:
    """One checked row: a prompt and K >= 2 distinct responses, most preferred first."""

    source_row: int  # JSONL: 1-based line; Parquet: 0-based row
    prompt: Text
    responses: list[Text]
    fields: tuple[str, ...]  # where each response came from: "chosen", "responses[2]", ...

    @property
    def is_chat(self) -> bool:
        """Whether the prompt (and so every response) is chat messages."""
        return isinstance(self.prompt, list)


class Undecodable:
    """Stands for a cell whose bytes are not UTF-8 (Arrow could not turn it into a str)."""


class Tied(Exception):
    """A ranking whose ties leave no usable preference under the ``ties`` setting."""


UNDECODABLE = Undecodable()


def check_pair(raw: Mapping[str, Any], row: int) -> PreferenceRecord:
    """The record of a ``{prompt, chosen, rejected}`` row; :class:`BadRow` when it is bad."""
    prompt = _text(raw.get("prompt"), "prompt", chat=None)
    chat = isinstance(prompt, list)
    chosen = _text(raw.get("chosen"), "chosen", chat=chat)
    rejected = _text(raw.get("rejected"), "rejected", chat=chat)
    if chosen == rejected:
        raise BadRow("identical responses", "rejected", "same as 'chosen'")
    return PreferenceRecord(row, prompt, [chosen, rejected], ("chosen", "rejected"))


def check_ranking(
    raw: Mapping[str, Any], row: int, scored: bool, ties: Ties
) -> tuple[PreferenceRecord, int]:
    """The record of a ``{prompt, responses[, scores]}`` row and how many tied responses went.

    Raises :class:`BadRow` for a bad row and :class:`Tied` when ties leave no preference.
    """
    prompt = _text(raw.get("prompt"), "prompt", chat=None)
    chat = isinstance(prompt, list)
    value = raw.get("responses")
    if value is None:
        raise BadRow("missing field", "responses", "missing or null")
    if not isinstance(value, list):
        raise BadRow(
            "not text", "responses", f"expected a list of responses, got {_describe(value)}"
        )
    responses = [_text(v, f"responses[{i}]", chat=chat) for i, v in enumerate(value)]
    if len(responses) < 2:
        raise BadRow(
            "too few responses",
            "responses",
            f"{len(responses)} response(s); a ranking needs at least 2",
        )
    for j in range(len(responses)):
        for i in range(j):
            if responses[i] == responses[j]:
                raise BadRow(
                    "identical responses", "responses", f"responses {i} and {j} are identical"
                )
    order, tied = list(range(len(responses))), 0
    if scored:
        order, tied = _order_by_scores(raw.get("scores"), len(responses), ties)
    record = PreferenceRecord(
        row, prompt, [responses[i] for i in order], tuple(f"responses[{i}]" for i in order)
    )
    return record, tied


def _order_by_scores(value: Any, k: int, ties: Ties) -> tuple[list[int], int]:
    """Response indices by descending score, ties resolved per ``ties``; and how many dropped."""
    if value is None:
        raise BadRow("missing field", "scores", "missing or null")
    if not isinstance(value, list):
        raise BadRow("bad scores", "scores", f"expected a list of numbers, got {_describe(value)}")
    if len(value) != k:
        raise BadRow("bad scores", "scores", f"{len(value)} scores for {k} responses")
    for i, score in enumerate(value):
        if (
            isinstance(score, bool)
            or not isinstance(score, (int, float))
            or not math.isfinite(score)
        ):
            raise BadRow("bad scores", f"scores[{i}]", f"not a finite number: {score!r}")
    order = sorted(range(k), key=lambda i: -value[i])  # stable: file order among equal scores
    kept = order[:1]
    for i in order[1:]:
        if value[i] != value[kept[-1]]:
            kept.append(i)
    tied = k - len(kept)
    if tied and (ties == "drop_row" or len(kept) < 2):
        raise Tied
    return kept, tied


def _text(value: Any, field: str, chat: bool | None) -> Text:
    """A prompt (``chat=None``: either form) or a response (the form the prompt has)."""
    what = "prompt" if chat is None else "response"
    if value is None:
        raise BadRow("missing field", field, "missing or null")
    if value is UNDECODABLE:
        raise BadRow("invalid UTF-8", field, "text is not valid UTF-8")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRow("invalid UTF-8", field, "text is not valid UTF-8") from None
    if isinstance(value, str):
        _check_string(value, field)
        if not value.strip():
            raise BadRow(f"empty {what}", field, f"empty {what}")
        return [{"role": "assistant", "content": value}] if chat else value
    if isinstance(value, list):
        if chat is False:
            raise BadRow(
                "not text", field, "chat messages (a list) need a prompt in chat messages too"
            )
        messages = [_message(m, field, i) for i, m in enumerate(value)]
        if not any(m["content"].strip() for m in messages):
            raise BadRow(f"empty {what}", field, f"empty {what}")
        return messages
    raise BadRow(
        "not text", field, f"expected a string or a list of chat messages, got {_describe(value)}"
    )


def _message(value: Any, field: str, index: int) -> Message:
    if not isinstance(value, dict):
        raise BadRow(
            "not text",
            field,
            f"message {index}: expected a {{role, content}} mapping, got {_describe(value)}",
        )
    for key in ("role", "content"):
        if value.get(key) is UNDECODABLE:
            raise BadRow("invalid UTF-8", field, f"message {index}: {key} is not valid UTF-8")
        if not isinstance(value.get(key), str):
            raise BadRow(
                "not text",
                field,
                f"message {index}: {key!r} must be a string, got {_describe(value.get(key))}",
            )
        _check_string(value[key], field)
    return {"role": value["role"], "content": value["content"]}


def _check_string(text: str, field: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRow(
            "invalid UTF-8",
            field,
            "text is not valid UTF-8 (undecodable bytes or a lone surrogate)",
        ) from None


def _describe(value: Any) -> str:
    shown = repr(value)
    return f"{type(value).__name__} {shown if len(shown) <= 40 else shown[:37] + '...'}"


def keep_one_k(
    records: list[PreferenceRecord], report: DataReport, on_bad_row: OnBadRow
) -> list[PreferenceRecord]:
    """Keeps the rows with the most common K (one K per dataset); the others are bad rows."""
    counts = Counter(len(r.responses) for r in records)
    if len(counts) <= 1:
        return records
    k, _ = counts.most_common(1)[0]
    kept = []
    for record in records:
        if len(record.responses) == k:
            kept.append(record)
            continue
        detail = (
            f"{len(record.responses)} responses, but most rows have {k}; a dataset has one K "
            "(split the file by number of responses)"
        )
        report.bad_row(record.source_row, BadRow("different K", "responses", detail), on_bad_row)
    return kept

"""Checks of one preference row, turning it into a :class:`PreferenceRecord`.

One check per shape of row (:mod:`rlhf.data.formats` says which shapes there are and picks one
per file). A check raises :class:`~rlhf.data.errors.BadRow` naming the field and what is wrong
with it; the reader turns that into an error or a counted skip. Scored rankings are sorted by
score, highest first; equal scores are ties, never a preference (:class:`Tied` drops the row).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rlhf.data.errors import BadRow, DataError, DataReport, OnBadRow

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
    # Unpaired feedback only: whether the completion (response 0) is desirable; response 1 is
    # another row's completion to this prompt, a mismatched pair (see ``add_mismatched``).
    label: bool | None = None

    @property
    def is_unpaired(self) -> bool:
        """Whether the row is unpaired feedback (a labelled completion), not a preference."""
        return self.label is not None

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
    prompt = check_text(raw.get("prompt"), "prompt", chat=None)
    chat = isinstance(prompt, list)
    chosen = check_text(raw.get("chosen"), "chosen", chat=chat)
    rejected = check_text(raw.get("rejected"), "rejected", chat=chat)
    if chosen == rejected:
        raise BadRow("identical responses", "rejected", "same as 'chosen'")
    return PreferenceRecord(row, prompt, [chosen, rejected], ("chosen", "rejected"))


def check_unpaired(raw: Mapping[str, Any], row: int) -> PreferenceRecord:
    """The record of a ``{prompt, completion, label}`` row of unpaired feedback (KTO): its one
    completion, and ``label`` true (desirable) or false (undesirable). The mismatched pair the
    record still needs is added over the whole file by :func:`add_mismatched`."""
    prompt = check_text(raw.get("prompt"), "prompt", chat=None)
    completion = check_text(raw.get("completion"), "completion", chat=isinstance(prompt, list))
    label = raw.get("label")
    if not isinstance(label, bool):
        raise BadRow(
            "bad label",
            "label",
            f"expected true (desirable) or false (undesirable), got "
            f"{'null' if label is None else _describe(label)}",
        )
    return PreferenceRecord(row, prompt, [completion], ("completion",), label)


def add_mismatched(records: list[PreferenceRecord], report: DataReport) -> list[PreferenceRecord]:
    """Unpaired records with their mismatched pair: the completion of another row, to be scored
    after this row's prompt, for KTO's reference point (an estimate of KL(policy || reference)
    from (prompt, completion) pairs that do not belong together, as in the KTO paper and TRL's
    ``KTOTrainer``).

    Row i takes the completion of the nearest row before it (cyclically: the last row for the
    first) whose prompt and completion both differ from its own and whose prompt has the same
    form (text or chat), so the two rows made of one pair (its chosen and rejected side by side)
    never mismatch each other. A :class:`DataError` naming the file if a row has no such partner.
    """
    n = len(records)
    result = []
    for i, record in enumerate(records):
        for step in range(1, n):
            other = records[(i - step) % n]
            if (
                other.prompt != record.prompt
                and other.responses[0] != record.responses[0]
                and other.is_chat == record.is_chat
            ):
                break
        else:
            raise DataError(
                f"{report.where(record.source_row)}: no other row has another prompt (in the "
                "same form, text or chat) and another completion; KTO's reference point needs "
                "mismatched (prompt, completion) pairs, so unpaired data needs rows of at least "
                "two prompts"
            )
        completions = [record.responses[0], other.responses[0]]
        fields = ("completion", f"mismatched completion ({report.row_kind} {other.source_row}'s)")
        result.append(
            PreferenceRecord(record.source_row, record.prompt, completions, fields, record.label)
        )
    return result


def check_ranking(
    raw: Mapping[str, Any], row: int, scored: bool, ties: Ties
) -> tuple[PreferenceRecord, int]:
    """The record of a ``{prompt, responses[, scores]}`` row and how many tied responses went.

    Raises :class:`BadRow` for a bad row and :class:`Tied` when ties leave no preference.
    """
    prompt = check_text(raw.get("prompt"), "prompt", chat=None)
    chat = isinstance(prompt, list)
    value = _list_field(raw, "responses", "a list of responses")
    responses = [check_text(v, f"responses[{i}]", chat=chat) for i, v in enumerate(value)]
    _check_distinct(responses, "responses")
    fields = [f"responses[{i}]" for i in range(len(responses))]
    scores = None
    if scored:
        scores = _scores(raw.get("scores"), len(responses))
    return _ranked(row, prompt, responses, fields, "responses", scores, ties)


def check_rated(
    raw: Mapping[str, Any], row: int, rating_key: str, ties: Ties
) -> tuple[PreferenceRecord, int]:
    """The ranking of an UltraFeedback-style row and how many tied responses went.

    The row is ``{prompt (or instruction), completions: [{response, <rating_key>: number}]}``;
    the completions are ranked by their rating, highest first, ties as in scored rankings.
    Raises :class:`BadRow` for a bad row and :class:`Tied` when ties leave no preference.
    """
    key = "prompt" if raw.get("prompt") is not None else "instruction"
    prompt = check_text(raw.get(key), key, chat=None)
    chat = isinstance(prompt, list)
    value = _list_field(raw, "completions", f"a list of {{response, {rating_key}}} mappings")
    responses, ratings = [], []
    for i, completion in enumerate(value):
        if not isinstance(completion, dict):
            raise BadRow(
                "not text",
                f"completions[{i}]",
                f"expected a {{response, {rating_key}}} mapping, got {_describe(completion)}",
            )
        responses.append(check_text(completion.get("response"), f"completions[{i}].response", chat))
        rating = completion.get(rating_key)
        if rating is None:
            raise BadRow(
                "bad scores",
                f"completions[{i}].{rating_key}",
                f"missing or null (set data.rating_key to the field that rates a completion; "
                f"its fields: {', '.join(k for k, v in completion.items() if v is not None)})",
            )
        ratings.append(rating)
    _check_distinct(responses, "completions")
    fields = [f"completions[{i}].response" for i in range(len(responses))]
    scores = _scores(ratings, len(responses), lambda i: f"completions[{i}].{rating_key}")
    return _ranked(row, prompt, responses, fields, "completions", scores, ties)


def check_conversations(raw: Mapping[str, Any], row: int) -> PreferenceRecord:
    """The pair of a ``{chosen, rejected}`` row of whole chat conversations (TRL's implicit prompt).

    The prompt is the leading messages both conversations share; each response is the rest of
    its conversation, which must start with an assistant message.
    """
    chosen = _conversation(raw.get("chosen"), "chosen")
    rejected = _conversation(raw.get("rejected"), "rejected")
    if chosen == rejected:
        raise BadRow("identical responses", "rejected", "same as 'chosen'")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise BadRow(
            "no shared prompt",
            "rejected",
            "'chosen' and 'rejected' differ from their first message, so they share no prompt "
            "(the prompt is the leading messages both hold; or give a 'prompt' field)",
        )
    responses = []
    for field, messages in (("chosen", chosen), ("rejected", rejected)):
        rest = messages[shared:]
        if not any(m["content"].strip() for m in rest):
            raise BadRow("empty response", field, "nothing after the messages both share")
        if rest[0]["role"] != "assistant":
            raise BadRow(
                "no shared prompt",
                field,
                f"message {shared} (the first after the messages both share) is a "
                f"{rest[0]['role']!r} message; a response starts with an 'assistant' message",
            )
        responses.append(rest)
    return PreferenceRecord(row, chosen[:shared], responses, ("chosen", "rejected"))


HH_ASSISTANT = "\n\nAssistant:"


def check_transcripts(raw: Mapping[str, Any], row: int) -> PreferenceRecord:
    """The pair of an Anthropic-HH row: ``chosen`` and ``rejected`` are whole transcripts.

    A transcript is ``"\\n\\nHuman: ... \\n\\nAssistant: ..."``; the prompt is everything up
    to and including the last ``"\\n\\nAssistant:"`` both share, each response the rest.
    """
    transcripts = []
    for field in ("chosen", "rejected"):
        value = raw.get(field)
        if isinstance(value, list):
            raise BadRow(
                "not text",
                field,
                "expected an Anthropic-HH transcript string, got a list (whole conversations "
                "as chat messages are the 'conversations' format)",
            )
        transcripts.append(check_text(value, field, chat=False))
    chosen, rejected = transcripts
    if chosen == rejected:
        raise BadRow("identical responses", "rejected", "same as 'chosen'")
    common = 0
    while common < min(len(chosen), len(rejected)) and chosen[common] == rejected[common]:
        common += 1
    end = chosen.rfind(HH_ASSISTANT, 0, common)
    if end < 0:
        raise BadRow(
            "no shared prompt",
            "rejected",
            f"'chosen' and 'rejected' share no {HH_ASSISTANT!r} turn; the prompt of a transcript "
            f"is everything up to the last {HH_ASSISTANT!r} both share",
        )
    cut = end + len(HH_ASSISTANT)
    responses = [chosen[cut:], rejected[cut:]]
    for field, response in zip(("chosen", "rejected"), responses, strict=True):
        if not response.strip():
            raise BadRow("empty response", field, "empty response after the shared prompt")
    return PreferenceRecord(row, chosen[:cut], responses, ("chosen", "rejected"))


def _list_field(raw: Mapping[str, Any], field: str, expected: str) -> list:
    """The list in ``raw[field]``; :class:`BadRow` when it is missing or not a list."""
    value = raw.get(field)
    if value is None:
        raise BadRow("missing field", field, "missing or null")
    if not isinstance(value, list):
        raise BadRow("not text", field, f"expected {expected}, got {_describe(value)}")
    return value


def _conversation(value: Any, field: str) -> list[Message]:
    messages = check_text(value, field, chat=None)
    if not isinstance(messages, list):
        raise BadRow(
            "not text",
            field,
            "expected a whole conversation as chat messages (a list of {role, content}), "
            f"got {_describe(value)}",
        )
    return messages


def _ranked(
    row: int,
    prompt: Text,
    responses: list[Text],
    fields: list[str],
    field: str,
    scores: list[float] | None,
    ties: Ties,
) -> tuple[PreferenceRecord, int]:
    """The record of checked responses (``field`` names their list), ordered by ``scores``."""
    order, tied = list(range(len(responses))), 0
    if scores is not None:
        order, tied = _order_by_scores(scores, ties)
    record = PreferenceRecord(
        row, prompt, [responses[i] for i in order], tuple(fields[i] for i in order)
    )
    return record, tied


def _check_distinct(responses: list[Text], field: str) -> None:
    """At least two responses, no two the same (``field`` names their list)."""
    if len(responses) < 2:
        raise BadRow(
            "too few responses",
            field,
            f"{len(responses)} response(s); a ranking needs at least 2",
        )
    for j in range(len(responses)):
        for i in range(j):
            if responses[i] == responses[j]:
                raise BadRow("identical responses", field, f"{field} {i} and {j} are identical")


def _scores(value: Any, k: int, name: Callable[[int], str] = "scores[{}]".format) -> list[float]:
    """``value`` checked as K finite numbers; ``name(i)`` is the field of the i-th."""
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
            raise BadRow("bad scores", name(i), f"not a finite number: {score!r}")
    return value


def _order_by_scores(scores: list[float], ties: Ties) -> tuple[list[int], int]:
    """Response indices by descending score, ties resolved per ``ties``; and how many dropped."""
    k = len(scores)
    order = sorted(range(k), key=lambda i: -scores[i])  # stable: file order among equal scores
    kept = order[:1]
    for i in order[1:]:
        if scores[i] != scores[kept[-1]]:
            kept.append(i)
    tied = k - len(kept)
    if tied and (ties == "drop_row" or len(kept) < 2):
        raise Tied
    return kept, tied


def check_text(value: Any, field: str, chat: bool | None) -> Text:
    """A prompt (``chat=None``: either form) or a response (the form the prompt has).

    Raises :class:`BadRow` naming ``field`` when ``value`` is missing, empty, not text or not
    chat messages (a list of ``{role, content}``), or not valid UTF-8.
    """
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

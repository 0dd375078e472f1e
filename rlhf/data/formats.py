"""The shapes of preference rows a file may hold, and which one a file holds.

- ``pairs``: ``{prompt, chosen, rejected}``, text or chat messages (also TRL's conversational
  format with an explicit prompt: ``prompt`` as messages, ``chosen``/``rejected`` as assistant
  messages; a text prompt beside whole conversations is read as TRL reads it, the prompt being
  the messages the conversations share);
- ``ranking``: ``{prompt, responses[, scores]}``;
- ``conversations``: ``{chosen, rejected}`` as whole chat conversations sharing their leading
  messages, which are the prompt (TRL's implicit-prompt form);
- ``hh``: ``{chosen, rejected}`` as Anthropic-HH transcripts (``"\\n\\nHuman: ...
  \\n\\nAssistant: ..."``), the prompt being everything up to the last ``"\\n\\nAssistant:"``
  both share;
- ``ultrafeedback``: ``{prompt (or instruction), completions: [{response, overall_score}]}``,
  a ranking by the completions' ratings (``rating_key`` names the rating);
- ``unpaired``: ``{prompt, completion, label}``, unpaired feedback for KTO: one completion,
  ``label`` true if desirable, false if not. Each row is scored with a mismatched pair too (see
  :func:`~rlhf.data.records.add_mismatched`). Pairs convert to it with
  :func:`~rlhf.data.io.unpaired_from_pairs` (chosen: true, rejected: false).

``data.format: auto`` detects the shape from a file's columns and its first row's values; a
first row that fits none is an error listing the shapes tried.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rlhf.data.errors import DataError
from rlhf.data.records import (
    HH_ASSISTANT,
    PreferenceRecord,
    Ties,
    check_conversations,
    check_pair,
    check_ranking,
    check_rated,
    check_transcripts,
    check_unpaired,
)

Shape = Literal["pairs", "ranking", "conversations", "hh", "ultrafeedback", "unpaired"]
Format = Literal["auto", "pairs", "ranking", "conversations", "hh", "ultrafeedback", "unpaired"]

# What a shape's rows are to a loss: preferences of two responses, rankings (K >= 2), or
# unpaired feedback (a loss's registry metadata ``ranking`` and ``unpaired`` say what it reads).
DataKind = Literal["pairs", "ranking", "unpaired"]
SHAPE_KINDS: dict[str, DataKind] = {
    "pairs": "pairs",
    "conversations": "pairs",
    "hh": "pairs",
    "ranking": "ranking",
    "ultrafeedback": "ranking",
    "unpaired": "unpaired",
}


@dataclass(frozen=True)
class RowRules:
    """What a row check needs besides the row: facts of its file and the data settings."""

    scored: bool = False  # rankings: the file has a 'scores' column
    ties: Ties = "drop_row"
    rating_key: str = "overall_score"  # ultrafeedback: the number that ranks a completion


# A row check: the record of a row and how many tied responses it dropped; raises BadRow or Tied.
RowCheck = Callable[[Mapping[str, Any], int, RowRules], "tuple[PreferenceRecord, int]"]


@dataclass(frozen=True)
class ShapeSpec:
    """One shape: how it looks (for messages), the columns it needs, its row check."""

    looks: str
    columns: tuple[str, ...]
    check: RowCheck


SHAPES: dict[str, ShapeSpec] = {
    "pairs": ShapeSpec(
        "{prompt, chosen, rejected}, text or chat messages",
        ("prompt", "chosen", "rejected"),
        lambda raw, row, rules: (_check_pair(raw, row), 0),
    ),
    "ranking": ShapeSpec(
        "{prompt, responses[, scores]}",
        ("prompt", "responses"),
        lambda raw, row, rules: check_ranking(raw, row, rules.scored, rules.ties),
    ),
    "conversations": ShapeSpec(
        "{chosen, rejected} as whole chat conversations sharing their first messages",
        ("chosen", "rejected"),
        lambda raw, row, rules: (check_conversations(raw, row), 0),
    ),
    "hh": ShapeSpec(
        f"{{chosen, rejected}} as Anthropic-HH transcripts with a shared {HH_ASSISTANT!r} turn",
        ("chosen", "rejected"),
        lambda raw, row, rules: (check_transcripts(raw, row), 0),
    ),
    "ultrafeedback": ShapeSpec(
        "{prompt or instruction, completions: [{response, <rating_key>}]}",
        ("completions",),
        lambda raw, row, rules: check_rated(raw, row, rules.rating_key, rules.ties),
    ),
    "unpaired": ShapeSpec(
        "{prompt, completion, label: bool}, unpaired feedback (KTO)",
        ("prompt", "completion", "label"),
        lambda raw, row, rules: (check_unpaired(raw, row), 0),
    ),
}


def _check_pair(raw: Mapping[str, Any], row: int) -> PreferenceRecord:
    """A pair; a text prompt beside whole conversations (as HuggingFaceH4/ultrafeedback_binarized
    has) is read as TRL reads it: the prompt is the messages the conversations share."""
    if isinstance(raw.get("prompt"), str) and all(
        isinstance(raw.get(key), list) for key in ("chosen", "rejected")
    ):
        return check_conversations(raw, row)
    return check_pair(raw, row)


def file_shape(
    columns: Sequence[str], first: Mapping[str, Any] | None, where: str, fmt: Format = "auto"
) -> Shape:
    """The shape of a file with ``columns`` whose first readable row is ``first``.

    ``fmt`` other than ``"auto"`` is checked against the columns. ``where`` names the file (and
    the first row) in errors.
    """
    found = ", ".join(columns) or "none"
    if fmt != "auto":
        needed = SHAPES[fmt].columns
        if fmt == "ultrafeedback" and "prompt" not in columns:
            needed = ("instruction", *needed)
        elif fmt == "ultrafeedback":
            needed = ("prompt", *needed)
        missing = [c for c in needed if c not in columns]
        if missing:
            raise DataError(
                f"{where}: format {fmt!r} ({SHAPES[fmt].looks}) needs a {missing[0]!r} column "
                f"(columns: {found})"
            )
        return fmt
    if "completions" in columns and ("prompt" in columns or "instruction" in columns):
        return "ultrafeedback"
    if "prompt" in columns:
        return _prompt_shape(columns, where, found)
    if "chosen" in columns and "rejected" in columns and first is not None:
        chosen = first.get("chosen")
        if isinstance(chosen, list):
            return "conversations"
        if isinstance(chosen, str) and HH_ASSISTANT in chosen:
            return "hh"
    tried = "; ".join(f"{name} {spec.looks}" for name, spec in SHAPES.items())
    raise DataError(
        f"{where}: fits no preference shape (columns: {found}); tried {tried}. "
        "Rename the fields to one of these shapes, or set data.format to read it as one"
    )


def _prompt_shape(columns: Sequence[str], where: str, found: str) -> Shape:
    if "responses" in columns:
        if "chosen" in columns or "rejected" in columns:
            raise DataError(
                f"{where}: has both 'responses' and 'chosen'/'rejected' columns; a file holds "
                "either pairs {prompt, chosen, rejected} or rankings {prompt, responses[, scores]}"
            )
        return "ranking"
    if "chosen" in columns or "rejected" in columns:
        missing = [c for c in ("chosen", "rejected") if c not in columns]
        if missing:
            raise DataError(
                f"{where}: pairs need columns prompt, chosen, rejected; no {missing[0]!r} column "
                f"(columns: {found})"
            )
        return "pairs"
    if "completion" in columns or "label" in columns:
        missing = [c for c in ("completion", "label") if c not in columns]
        if missing:
            raise DataError(
                f"{where}: unpaired feedback needs columns prompt, completion, label; no "
                f"{missing[0]!r} column (columns: {found})"
            )
        return "unpaired"
    raise DataError(
        f"{where}: neither pairs {{prompt, chosen, rejected}}, rankings "
        f"{{prompt, responses[, scores]}} nor unpaired feedback {{prompt, completion, label}} "
        f"(columns: {found})"
    )

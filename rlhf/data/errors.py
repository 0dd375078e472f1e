"""Errors in preference data, and the report of what loading skipped or changed.

Every message names the file, the row and the field. JSONL rows are named by their 1-based line
number (``data/prefs.jsonl line 17``), Parquet rows by their 0-based row index
(``data/prefs.parquet row 16 (0-based)``), so a message always says which count it uses.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Literal

OnBadRow = Literal["error", "skip"]
RowKind = Literal["line", "row"]

MAX_EXAMPLES = 5


class DataError(ValueError):
    """Preference data that cannot be used; the message says where (file, row, field) and why."""


class BadRow(Exception):
    """A row check failed: ``reason`` is the report's counter key, ``field`` the column at fault."""

    def __init__(self, reason: str, field: str | None, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.field = field
        self.detail = detail


def row_kind_of(path: str) -> RowKind:
    """How rows of ``path`` are numbered: 1-based lines for JSONL, 0-based rows for Parquet."""
    return "line" if str(path).endswith(".jsonl") else "row"


def describe(path: str, kind: RowKind, row: int, field: str | None = None) -> str:
    """``data/x.jsonl line 17, field 'rejected'`` or ``data/x.parquet row 16 (0-based)``."""
    where = f"{path} line {row}" if kind == "line" else f"{path} row {row} (0-based)"
    return f"{where}, field {field!r}" if field is not None else where


@dataclass
class DataReport:
    """What loading one file kept, skipped (counted per reason) and changed; print ``summary()``."""

    path: str
    row_kind: RowKind = "row"
    rows_read: int = 0
    rows_kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows skipped
    examples: list[str] = field(default_factory=list)  # the first few skip messages
    tied_rows_dropped: int = 0  # rows whose scores tied (or too few responses left after ties)
    tied_responses_dropped: int = 0  # responses dropped because their score tied an earlier one
    join_fallbacks: int = 0  # responses tokenized apart because the tokenizer merged at the join
    truncated_prompts: int = 0  # prompts cut from the left (prompt_truncation="left")
    truncated_responses: int = 0  # responses cut from the end to fit max_length

    def where(self, row: int, field: str | None = None) -> str:
        """The location of ``row`` (and ``field``) in this report's file."""
        return describe(self.path, self.row_kind, row, field)

    def bad_row(self, row: int, error: BadRow, on_bad_row: OnBadRow) -> None:
        """Raises :class:`DataError` for ``error``, or counts it when ``on_bad_row == "skip"``."""
        message = f"{self.where(row, error.field)}: {error.detail}"
        if on_bad_row == "error":
            raise DataError(f"{message} (on_bad_row='skip' skips and counts such rows)")
        self.skipped[error.reason] = self.skipped.get(error.reason, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(message)

    @property
    def rows_skipped(self) -> int:
        """Rows skipped as bad (ties not included)."""
        return sum(self.skipped.values())

    def summary(self) -> str:
        """A few lines, printed when the data is read: counts per reason and the first examples."""
        lines = [f"{self.path}: kept {self.rows_kept} of {self.rows_read} rows"]
        for reason, count in sorted(self.skipped.items()):
            lines.append(f"  skipped {count} row(s): {reason}")
        notes = {
            "row(s) dropped for tied scores": self.tied_rows_dropped,
            "tied response(s) dropped": self.tied_responses_dropped,
            "response(s) tokenized apart (tokenizer merged at the prompt join)": (
                self.join_fallbacks
            ),
            "prompt(s) truncated from the left": self.truncated_prompts,
            "response(s) truncated to max_length": self.truncated_responses,
        }
        lines += [f"  {count} {what}" for what, count in notes.items() if count]
        if self.examples:
            lines.append("  first skipped rows:")
            lines += [f"    {example}" for example in self.examples]
        return "\n".join(lines)

    def to_json(self) -> str:
        """The report as JSON (kept in the table's metadata, so a cache hit can print it)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DataReport:
        """The inverse of :meth:`to_json`."""
        return cls(**json.loads(text))

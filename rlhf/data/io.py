"""Reading and writing preference files (Parquet, JSONL) through pyarrow, with row checks.

The shapes of file (:mod:`rlhf.data.formats`, detected per file or named by ``format``):

- pairs: ``{prompt, chosen, rejected}``;
- rankings: ``{prompt, responses}`` (best first) or ``{prompt, responses, scores}`` (sorted by
  score, highest first; equal scores are ties and never become a preference);
- the ecosystem's usual ones: TRL's conversations with an implicit prompt, Anthropic-HH
  transcripts, UltraFeedback's rated completions (a ranking);
- unpaired feedback (KTO): ``{prompt, completion, label}``, each row with a mismatched pair
  (another row's completion) for KTO's reference point; :func:`unpaired_from_pairs` converts
  pairs to it.

Prompts and responses are plain strings or chat messages (lists of ``{role, content}``). Each
row is checked (:mod:`rlhf.data.records`); a bad row is an error naming file, row and field, or
(``on_bad_row="skip"``) a counted skip in the :class:`DataReport`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq

from rlhf.data.errors import BadRow, DataError, DataReport, OnBadRow, row_kind_of
from rlhf.data.formats import SHAPES, Format, RowRules, file_shape
from rlhf.data.records import (
    UNDECODABLE,
    PreferenceRecord,
    Tied,
    Ties,
    add_mismatched,
    keep_one_k,
)
from rlhf.files import atomic_path

SUFFIXES = (".parquet", ".jsonl")


def check_data_file(path: str | Path) -> None:
    """Raises :class:`DataError` unless ``path`` is an existing ``.parquet`` or ``.jsonl`` file."""
    name = str(path)
    if not name:
        raise DataError("no data file given: set it to a .parquet or .jsonl preference file")
    if not name.endswith(SUFFIXES):
        raise DataError(f"{name}: unknown file type; expected one of {', '.join(SUFFIXES)}")
    if Path(path).is_dir():
        raise DataError(f"{name} is a directory; give the preference file in it")
    if not Path(path).is_file():
        relative = "" if Path(path).is_absolute() else f" (relative to {Path.cwd()})"
        raise DataError(f"{name}: no such file{relative}")


def read_preferences(
    path: str | Path,
    *,
    on_bad_row: OnBadRow = "error",
    ties: Ties = "drop_row",
    format: Format = "auto",
    rating_key: str = "overall_score",
) -> tuple[list[PreferenceRecord], DataReport]:
    """Reads and checks a preference file; returns its good rows and a report of the rest.

    ``ties="drop_row"`` drops a scored ranking with any tie; ``"drop_response"`` keeps the first
    (in file order) of each group of equal scores and drops the others. All rows of a dataset
    must have the same number of responses K; rows with another K are bad rows. ``format``
    names the shape of the rows (``"auto"``: detected from the columns and the first row);
    ``rating_key`` is the field that rates an UltraFeedback completion.
    """
    check_data_file(path)
    name = str(path)
    columns, rows = read_rows(name)
    first, rows = _peek(rows)
    shape = file_shape(columns, first, name, format)
    check = SHAPES[shape].check
    rules = RowRules(scored="scores" in columns, ties=ties, rating_key=rating_key)
    report = DataReport(name, row_kind_of(name))
    records = []
    for source_row, raw in rows:
        report.rows_read += 1
        try:
            if isinstance(raw, BadRow):
                raise raw
            record, tied = check(raw, source_row, rules)
            report.tied_responses_dropped += tied
        except BadRow as error:
            report.bad_row(source_row, error, on_bad_row)
            continue
        except Tied:
            report.tied_rows_dropped += 1
            continue
        records.append(record)
    records = keep_one_k(records, report, on_bad_row)
    if shape == "unpaired":
        records = add_mismatched(records, report)
    report.rows_kept = len(records)
    return records, report


def unpaired_from_pairs(path: str | Path, out: str | Path) -> Path:
    """Writes the pairs of ``path`` as unpaired feedback to the Parquet file ``out``: each pair
    ``{prompt, chosen, rejected}`` becomes ``{prompt, completion: chosen, label: true}`` and
    ``{prompt, completion: rejected, label: false}`` (KTO's data, as the KTO paper derives it from
    preference data). The pairs are read with the same checks as for training (every row must
    be good); other shapes (rankings, ...) are an error.
    """
    records, _ = read_preferences(path)
    if records and records[0].fields != ("chosen", "rejected"):
        raise DataError(
            f"{path}: holds {', '.join(records[0].fields)} rows, not pairs; only pairs "
            "{prompt, chosen, rejected} (or conversations, HH transcripts) convert to unpaired "
            "feedback"
        )
    unpaired = []
    for record in records:
        chosen, rejected = record.responses
        unpaired.append({"prompt": record.prompt, "completion": chosen, "label": True})
        unpaired.append({"prompt": record.prompt, "completion": rejected, "label": False})
    return write_preferences(out, unpaired)


# ---- reading files -------------------------------------------------------------------------

Rows = Iterator[tuple[int, "dict[str, Any] | BadRow"]]


def read_rows(path: str) -> tuple[list[str], Rows]:
    """The column names of a ``.jsonl`` or ``.parquet`` file and its rows, numbered as
    :func:`~rlhf.data.errors.row_kind_of` says; a line that is not a JSON object is a
    :class:`BadRow` in place of its row."""
    return _read_jsonl(Path(path)) if str(path).endswith(".jsonl") else _read_parquet(str(path))


def _peek(rows: Rows) -> tuple[dict[str, Any] | None, Rows]:
    """The first row that is not a BadRow (None if none), and all rows as before."""
    seen = []
    for item in rows:
        seen.append(item)
        if not isinstance(item[1], BadRow):
            return item[1], itertools.chain(seen, rows)
    return None, iter(seen)


def _read_parquet(path: str) -> tuple[list[str], Rows]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file: {error}") from None
    return table.column_names, _arrow_rows(table, range(table.num_rows))


def _read_jsonl(path: Path) -> tuple[list[str], Rows]:
    """pyarrow reads the file; where it cannot, lines are parsed one by one to name the bad one."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    numbers = [i + 1 for i, line in enumerate(lines) if line.strip()]  # pyarrow skips blanks
    if not numbers:
        raise DataError(f"{path}: the file is empty")
    block_size = max(1 << 20, max((len(line) for line in lines), default=0) + 2)
    try:
        table = pj.read_json(pa.BufferReader(data), pj.ReadOptions(block_size=block_size))
    except pa.ArrowException:
        table = None  # malformed JSON, or a field whose type changes between rows
    if table is not None and table.num_rows == len(numbers):
        return table.column_names, _arrow_rows(table, numbers)
    return _parse_lines(lines, path)  # also when a line holds two objects: the counts differ


def _parse_lines(lines: list[bytes], path: Path) -> tuple[list[str], Rows]:
    columns: dict[str, None] = {}
    rows: list[tuple[int, dict[str, Any] | BadRow]] = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        # surrogateescape keeps undecodable bytes as lone surrogates: the row check names the field
        text = line.decode("utf-8", "surrogateescape")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as error:
            rows.append((index + 1, BadRow("malformed JSON", None, _json_message(error))))
            continue
        if not isinstance(obj, dict):
            detail = f"malformed JSON: expected an object, got {type(obj).__name__}"
            rows.append((index + 1, BadRow("malformed JSON", None, detail)))
            continue
        columns.update(dict.fromkeys(obj))
        rows.append((index + 1, obj))
    malformed = [(line, row) for line, row in rows if isinstance(row, BadRow)]
    if not columns and malformed:  # no object in the file: name its first line, not a column
        line, error = malformed[0]
        raise DataError(f"{path} line {line}: {error.detail}")
    return list(columns), iter(rows)


def _json_message(error: json.JSONDecodeError) -> str:
    return f"malformed JSON: {error.msg} (column {error.colno})"


def _arrow_rows(table: pa.Table, numbers: Sequence[int]) -> Rows:
    position = 0
    for batch in table.to_batches():
        try:
            rows = batch.to_pylist()
        except UnicodeDecodeError:  # some cell is not UTF-8: decode cell by cell to find it
            rows = [_decode_row(batch, i) for i in range(batch.num_rows)]
        for row in rows:
            yield numbers[position], row
            position += 1


def _decode_row(batch: pa.RecordBatch, index: int) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        try:
            row[name] = column[index].as_py()
        except UnicodeDecodeError:
            row[name] = UNDECODABLE
    return row


# ---- writing -------------------------------------------------------------------------------


def write_preferences(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Writes pairs, rankings or unpaired feedback (all rows the same keys) to a Parquet file,
    atomically."""
    if not str(path).endswith(".parquet"):
        raise ValueError(f"{path}: write_preferences writes Parquet; name the file *.parquet")
    if not rows:
        raise ValueError(f"{path}: no rows to write")
    keys = list(rows[0])
    file_shape(keys, rows[0], f"{path} (rows[0])")
    for index, row in enumerate(rows):
        if set(row) != set(keys):
            raise ValueError(
                f"{path}: rows[{index}] has keys {sorted(row)}, rows[0] has {sorted(keys)}"
            )
    try:
        table = pa.Table.from_pylist([dict(row) for row in rows])
    except (pa.ArrowException, TypeError) as error:
        raise ValueError(f"{path}: rows cannot be stored as one Arrow table: {error}") from None
    with atomic_path(path) as temp:
        pq.write_table(table, temp)
    return Path(path)

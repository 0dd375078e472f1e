"""The Arrow layout of tokenized preference data, and the reference log-probs column.

One row per prompt:

- ``source_row`` int64: the row in the original file (1-based line for JSONL, 0-based row for
  Parquet; the schema metadata says which), so errors and audits point back to it;
- ``prompt_ids`` list<int32>: prompt tokens, with the tokenizer's BOS (if any) at the start;
- ``response_ids`` list<list<int32>>: K responses, most preferred first, each ending in EOS
  unless it was truncated to fit ``max_length``;
- ``num_responses`` int32: K, the same on every row;
- ``label`` bool, unpaired feedback (KTO) only: whether response 0, the row's completion, is
  desirable; response 1 is another row's completion after this prompt, a mismatched pair;
- ``ref_logps`` list<float32> (added by :func:`with_ref_logps`): one reference log-prob per
  response, summed over its tokens.

The schema metadata holds the source file, how its rows are numbered, the format version and the
loading report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from rlhf.data.errors import DataReport, describe

FORMAT_VERSION = 1  # bump when the layout or the tokenization rules change: it keys the cache

SOURCE_KEY = b"rlhf.data.source"
ROW_KIND_KEY = b"rlhf.data.row_kind"
FORMAT_KEY = b"rlhf.data.format_version"
REPORT_KEY = b"rlhf.data.report"

SCHEMA = pa.schema(
    [
        pa.field("source_row", pa.int64()),
        pa.field("prompt_ids", pa.list_(pa.int32())),
        pa.field("response_ids", pa.list_(pa.list_(pa.int32()))),
        pa.field("num_responses", pa.int32()),
    ]
)
REF_LOGPS = pa.field("ref_logps", pa.list_(pa.float32()))
LABEL = pa.field("label", pa.bool_())


def build_table(
    source_rows: Sequence[int],
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[Sequence[int]]],
    report: DataReport,
    labels: Sequence[bool] | None = None,
) -> pa.Table:
    """The preference table of tokenized rows, with source and report in its metadata;
    ``labels`` (unpaired feedback only) adds the ``label`` column."""
    columns = [
        pa.array(source_rows, pa.int64()),
        pa.array(prompt_ids, SCHEMA.field("prompt_ids").type),
        pa.array(response_ids, SCHEMA.field("response_ids").type),
        pa.array([len(r) for r in response_ids], pa.int32()),
    ]
    metadata = {
        SOURCE_KEY: report.path.encode(),
        ROW_KIND_KEY: report.row_kind.encode(),
        FORMAT_KEY: str(FORMAT_VERSION).encode(),
        REPORT_KEY: report.to_json().encode(),
    }
    schema = SCHEMA
    if labels is not None:
        columns.append(pa.array(labels, LABEL.type))
        schema = schema.append(LABEL)
    return pa.Table.from_arrays(columns, schema=schema.with_metadata(metadata))


def is_unpaired(table: pa.Table) -> bool:
    """Whether ``table`` holds unpaired feedback (a ``label`` column), not preferences."""
    return LABEL.name in table.column_names


def source_of(table: pa.Table, index: int) -> str:
    """Where row ``index`` of ``table`` came from, e.g. ``data/prefs.jsonl line 17``."""
    metadata = table.schema.metadata or {}
    path = metadata.get(SOURCE_KEY, b"<unknown file>").decode()
    kind = "line" if metadata.get(ROW_KIND_KEY) == b"line" else "row"
    return describe(path, kind, table.column("source_row")[index].as_py())


def report_of(table: pa.Table) -> DataReport | None:
    """The loading report kept in ``table``'s metadata (also after a cache round trip)."""
    text = (table.schema.metadata or {}).get(REPORT_KEY)
    return None if text is None else DataReport.from_json(text.decode())


def num_responses(table: pa.Table) -> int:
    """K of ``table``; an error naming a row when rows disagree (one K per dataset)."""
    if table.num_rows == 0:
        raise ValueError("an empty preference table has no K")
    column = table.column("num_responses")
    first = column[0].as_py()
    differs = pc.not_equal(column, first)
    if pc.any(differs).as_py():
        index = pc.index(differs, True).as_py()
        raise ValueError(
            f"{source_of(table, index)} has {column[index].as_py()} responses, "
            f"{source_of(table, 0)} has {first}; one K per batch"
        )
    return first


def with_ref_logps(table: pa.Table, ref_logps: Sequence[Sequence[float]]) -> pa.Table:
    """``table`` with a ``ref_logps`` column (replacing any): one finite value per response."""
    if len(ref_logps) != table.num_rows:
        raise ValueError(
            f"ref_logps has {len(ref_logps)} rows, the preference table {table.num_rows}"
        )
    counts = table.column("num_responses").to_pylist()
    for index, (values, k) in enumerate(zip(ref_logps, counts, strict=True)):
        if len(values) != k:
            raise ValueError(
                f"ref_logps[{index}] ({source_of(table, index)}): {len(values)} values "
                f"for {k} responses"
            )
        for value in values:
            if not math.isfinite(value):
                raise ValueError(
                    f"ref_logps[{index}] ({source_of(table, index)}): {value} is not finite"
                )
    if REF_LOGPS.name in table.column_names:
        table = table.drop_columns([REF_LOGPS.name])
    column = pa.array([list(values) for values in ref_logps], REF_LOGPS.type)
    return table.append_column(REF_LOGPS, column)

"""Unpaired feedback (KTO): {prompt, completion, label} rows, their mismatched pairs, the label
column through tokenization and collation, and the conversion from pairs."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch

from rlhf.data import DataConfig, DataError, collate, load_preferences, read_preferences
from rlhf.data.io import unpaired_from_pairs, write_preferences
from rlhf.data.loader import split_by_prompt

from .helpers import BOS, EOS, PAD, V

HINT = " (on_bad_row='skip' skips and counts such rows)"

ROWS = [
    {"prompt": "the cat", "completion": "good", "label": True},
    {"prompt": "the cat", "completion": "bad", "label": False},
    {"prompt": "a mat", "completion": "yes", "label": True},
    {"prompt": "a mat", "completion": "no", "label": False},
]


def test_rows_are_detected_and_each_takes_the_nearest_earlier_row_of_another_prompt(write_jsonl):
    records, report = read_preferences(write_jsonl(ROWS))
    got = [(r.prompt, r.responses, r.label) for r in records]
    # Row 1 has no earlier row: it wraps to the last ("a mat", "no"); rows 3 and 4 skip each
    # other (same prompt) for the nearest "the cat" row before them.
    assert got == [
        ("the cat", ["good", "no"], True),
        ("the cat", ["bad", "no"], False),
        ("a mat", ["yes", "bad"], True),
        ("a mat", ["no", "bad"], False),
    ]
    assert records[0].fields == ("completion", "mismatched completion (line 4's)")
    assert (report.rows_read, report.rows_kept, report.rows_skipped) == (4, 4, 0)


def test_a_mismatched_pair_never_repeats_the_rows_completion(write_jsonl):
    rows = [
        {"prompt": "a", "completion": "yes", "label": True},
        {"prompt": "b", "completion": "yes", "label": False},
        {"prompt": "c", "completion": "no", "label": True},
    ]
    records, _ = read_preferences(write_jsonl(rows))
    assert [r.responses for r in records] == [["yes", "no"], ["yes", "no"], ["no", "yes"]]


@pytest.mark.parametrize(
    ("row", "field", "detail"),
    [
        ({"prompt": "a", "completion": "yes", "label": "true"}, "label", "got str 'true'"),
        ({"prompt": "a", "completion": "yes", "label": 1}, "label", "got int 1"),
        ({"prompt": "a", "completion": "yes", "label": None}, "label", "got null"),
        ({"prompt": "a", "completion": "", "label": True}, "completion", "empty response"),
        ({"prompt": "a", "completion": None, "label": True}, "completion", "missing or null"),
    ],
)
def test_bad_rows_name_file_row_and_field_or_are_counted(write_jsonl, row, field, detail):
    path = write_jsonl([*ROWS, row])
    with pytest.raises(DataError) as caught:
        read_preferences(path)
    message = str(caught.value)
    assert message.startswith(f"{path} line 5, field {field!r}: ") and message.endswith(HINT)
    assert detail in message
    records, report = read_preferences(path, on_bad_row="skip")
    assert len(records) == 4 and report.rows_skipped == 1 and report.rows_read == 5


def test_one_prompt_has_no_mismatched_pair(write_jsonl):
    rows = [{"prompt": "a", "completion": w, "label": w == "yes"} for w in ("yes", "no")]
    with pytest.raises(DataError, match="line 1: no other row has another prompt"):
        read_preferences(write_jsonl(rows))


def test_columns_name_the_shape(write_jsonl):
    with pytest.raises(DataError, match="unpaired feedback needs columns .* no 'label' column"):
        read_preferences(write_jsonl([{"prompt": "a", "completion": "yes"}]))
    with pytest.raises(DataError, match="format 'unpaired' .* needs a 'completion' column"):
        read_preferences(write_jsonl([{"prompt": "a", "chosen": "b"}]), format="unpaired")


def test_labels_reach_the_table_and_the_batch(write_jsonl, tokenizer):
    cfg = DataConfig(path="x.jsonl", max_prompt_length=8, max_length=16)
    table, report = load_preferences(write_jsonl(ROWS), tokenizer, cfg)
    assert table.column("label").to_pylist() == [True, False, True, False]
    assert table.column("response_ids").to_pylist()[0] == [[V["good"], EOS], [V["no"], EOS]]
    batch = collate(table.take([1, 2]), PAD)
    assert batch.labels.tolist() == [False, True]
    # Row i's completion, then its mismatched pair: prompt i with another row's completion.
    assert batch.input_ids[0].tolist() == [BOS, V["the"], V["cat"], V["bad"], EOS]
    assert batch.input_ids[1].tolist() == [BOS, V["the"], V["cat"], V["no"], EOS]
    assert batch.input_ids[2].tolist() == [BOS, V["a"], V["mat"], V["yes"], EOS]
    shard = batch.shard(1, 2)
    assert shard.labels.tolist() == [True] and shard.num_prompts == 1
    train, held = split_by_prompt(table, 0.5)
    assert train.num_rows + held.num_rows == 4 and "label" in held.column_names
    pairs = collate(table.take([0]).drop_columns(["label"]), PAD)
    assert pairs.labels is None


def test_a_truncated_mismatched_completion_may_equal_the_rows_own(write_jsonl, tokenizer):
    rows = [
        {"prompt": "a", "completion": "yes no", "label": True},
        {"prompt": "b", "completion": "yes cat", "label": False},
    ]
    cfg = DataConfig(path="x.jsonl", max_prompt_length=2, max_length=3)
    table, _ = load_preferences(write_jsonl(rows), tokenizer, cfg)
    assert table.column("response_ids").to_pylist()[0] == [[V["yes"]], [V["yes"]]]


def test_pairs_convert_to_unpaired_feedback(tmp_path, tokenizer):
    pairs = [
        {"prompt": "the cat", "chosen": "good", "rejected": "bad"},
        {"prompt": "a mat", "chosen": "yes", "rejected": "no"},
    ]
    source = write_preferences(tmp_path / "pairs.parquet", pairs)
    out = unpaired_from_pairs(source, tmp_path / "unpaired.parquet")
    assert pq.read_table(out).to_pylist() == ROWS
    records, _ = read_preferences(out)
    assert [r.responses for r in records][:2] == [["good", "no"], ["bad", "no"]]
    ranking = write_preferences(tmp_path / "r.parquet", [{"prompt": "a", "responses": ["b", "c"]}])
    with pytest.raises(DataError, match="not pairs; only pairs"):
        unpaired_from_pairs(ranking, tmp_path / "x.parquet")


def test_a_batch_checks_its_labels():
    from rlhf.data.batch import PreferenceBatch

    ids = torch.ones(4, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"labels must be bool of shape \(2,\)"):
        PreferenceBatch(ids, ids, ids, None, 2, torch.tensor([1, 0]))

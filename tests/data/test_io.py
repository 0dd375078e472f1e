"""Reading preference files: both shapes, both formats, scores and ties, every bad row named."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf.data import DataError, read_preferences, write_preferences

HINT = " (on_bad_row='skip' skips and counts such rows)"

PAIRS = [
    {"prompt": "hi", "chosen": "yes", "rejected": "no"},
    {"prompt": "the cat", "chosen": "sat", "rejected": "ran"},
]
RANKINGS = [
    {"prompt": "hi", "responses": ["good", "yes", "no"]},
    {"prompt": "the cat", "responses": ["sat", "on", "mat"]},
]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_pairs_both_formats(fmt, tmp_path, write_jsonl):
    if fmt == "jsonl":
        path = write_jsonl(PAIRS)
    else:
        path = write_preferences(tmp_path / "prefs.parquet", PAIRS)
    records, report = read_preferences(path)
    assert [(r.prompt, r.responses) for r in records] == [
        ("hi", ["yes", "no"]),
        ("the cat", ["sat", "ran"]),
    ]
    assert records[1].fields == ("chosen", "rejected")
    # JSONL rows are 1-based line numbers, Parquet rows 0-based indices
    assert [r.source_row for r in records] == ([1, 2] if fmt == "jsonl" else [0, 1])
    assert (report.rows_read, report.rows_kept, report.rows_skipped) == (2, 2, 0)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_rankings_both_formats(fmt, tmp_path, write_jsonl):
    if fmt == "jsonl":
        path = write_jsonl(RANKINGS)
    else:
        path = write_preferences(tmp_path / "prefs.parquet", RANKINGS)
    records, _ = read_preferences(path)
    assert [r.responses for r in records] == [["good", "yes", "no"], ["sat", "on", "mat"]]


def test_scores_sort_descending_and_ties_drop_responses(write_jsonl):
    path = write_jsonl(
        [
            {"prompt": "a", "responses": ["r0", "r1", "r2"], "scores": [0.1, 0.9, 0.5]},
            # 1 and 2 tie at 2.0: keep the first (r1), drop r2 -> [r1, r0, r3]
            {"prompt": "b", "responses": ["r0", "r1", "r2", "r3"], "scores": [1, 2, 2, 0]},
            # a two-way tie leaves one response: the row goes
            {"prompt": "c", "responses": ["r0", "r1"], "scores": [1, 1]},
            {"prompt": "d", "responses": ["r0", "r1", "r2"], "scores": [3, 2, 1]},
        ]
    )
    records, report = read_preferences(path, ties="drop_response")
    assert [r.responses for r in records] == [
        ["r1", "r2", "r0"],
        ["r1", "r0", "r3"],
        ["r0", "r1", "r2"],
    ]
    assert records[1].fields == ("responses[1]", "responses[0]", "responses[3]")
    assert (report.tied_responses_dropped, report.tied_rows_dropped) == (1, 1)
    assert report.rows_skipped == 0 and report.rows_kept == 3


def test_ties_drop_row(write_jsonl):
    path = write_jsonl(
        [
            {"prompt": "a", "responses": ["r0", "r1", "r2"], "scores": [0.1, 0.9, 0.5]},
            {"prompt": "b", "responses": ["r0", "r1", "r2"], "scores": [1, 2, 2]},
        ]
    )
    records, report = read_preferences(path, ties="drop_row")
    assert [r.prompt for r in records] == ["a"]
    assert (report.tied_rows_dropped, report.tied_responses_dropped) == (1, 0)
    assert "1 row(s) dropped for tied scores" in report.summary()


def _error(path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        read_preferences(path, **kwargs)
    return str(info.value)


GOOD = {"prompt": "hi", "chosen": "yes", "rejected": "no"}


@pytest.mark.parametrize(
    ("bad", "field", "detail"),
    [
        ({"prompt": "hi", "chosen": "yes"}, "rejected", "missing or null"),
        ({"prompt": "hi", "chosen": None, "rejected": "no"}, "chosen", "missing or null"),
        ({"prompt": "hi", "chosen": "yes", "rejected": ""}, "rejected", "empty response"),
        ({"prompt": "hi", "chosen": "yes", "rejected": "yes"}, "rejected", "same as 'chosen'"),
        (
            {"prompt": "hi", "chosen": 5, "rejected": "no"},
            "chosen",
            "expected a string or a list of chat messages, got int 5",
        ),
        (
            {"prompt": "hi", "chosen": "yes", "rejected": [{"role": "assistant", "content": "x"}]},
            "rejected",
            "chat messages (a list) need a prompt in chat messages too",
        ),
        ({"prompt": "  ", "chosen": "yes", "rejected": "no"}, "prompt", "empty prompt"),
        (
            '{"prompt": "hi", "chosen": "yes", "rejected": "\\ud800"}',
            "rejected",
            "text is not valid UTF-8 (undecodable bytes or a lone surrogate)",
        ),
        (
            b'{"prompt": "hi", "chosen": "\xff\xfe", "rejected": "no"}',
            "chosen",
            "text is not valid UTF-8",
        ),
    ],
)
def test_bad_pair_rows_are_named(write_jsonl, bad, field, detail):
    # a blank line 2: the bad row is on line 4 of the file, not the third record
    path = write_jsonl([GOOD, "", GOOD, bad, GOOD])
    assert _error(path) == f"{path} line 4, field {field!r}: {detail}{HINT}"
    records, report = read_preferences(path, on_bad_row="skip")
    assert [r.source_row for r in records] == [1, 3, 5]
    assert report.rows_skipped == 1 and report.rows_kept == 3
    assert report.examples == [f"{path} line 4, field {field!r}: {detail}"]


@pytest.mark.parametrize(
    ("bad", "field", "detail"),
    [
        (
            {"prompt": "hi", "responses": ["yes"]},
            "responses",
            "1 response(s); a ranking needs at least 2",
        ),
        (
            {"prompt": "hi", "responses": ["yes", "no", "yes"]},
            "responses",
            "responses 0 and 2 are identical",
        ),
        ({"prompt": "hi", "responses": ["yes", None]}, "responses[1]", "missing or null"),
        (
            {"prompt": "hi", "responses": "yes"},
            "responses",
            "expected a list of responses, got str 'yes'",
        ),
        (
            {"prompt": "hi", "responses": ["yes", "no"], "scores": [1.0]},
            "scores",
            "1 scores for 2 responses",
        ),
        ({"prompt": "hi", "responses": ["yes", "no"], "scores": None}, "scores", "missing or null"),
    ],
)
def test_bad_ranking_rows_are_named(write_jsonl, bad, field, detail):
    good = {"prompt": "hi", "responses": ["yes", "no"], "scores": [2.0, 1.0]}
    path = write_jsonl([good, bad])
    assert _error(path) == f"{path} line 2, field {field!r}: {detail}{HINT}"
    _, report = read_preferences(path, on_bad_row="skip")
    assert report.rows_kept == 1 and report.rows_skipped == 1


def test_malformed_json_names_the_line(write_jsonl):
    path = write_jsonl([GOOD, '{"prompt": "hi" "chosen": "a", "rejected": "b"}', GOOD])
    message = "malformed JSON: Expecting ',' delimiter (column 17)"
    assert _error(path) == f"{path} line 2: {message}{HINT}"
    records, report = read_preferences(path, on_bad_row="skip")
    assert [r.source_row for r in records] == [1, 3]
    assert report.skipped == {"malformed JSON": 1}


def test_two_objects_on_one_line_is_malformed(write_jsonl):
    # pyarrow reads this line as two rows; the line count tells, and json names the column:
    # the first object is 51 characters, a space, the second starts at column 53
    path = write_jsonl([GOOD, json.dumps(GOOD) + " " + json.dumps(GOOD)])
    assert _error(path) == f"{path} line 2: malformed JSON: Extra data (column 53){HINT}"


def test_parquet_invalid_utf8_names_row_and_field(tmp_path):
    path = tmp_path / "prefs.parquet"
    chosen = pa.array([b"yes", b"\xff\xfe"], pa.binary()).view(pa.string())
    pq.write_table(
        pa.table({"prompt": ["hi", "hi"], "chosen": chosen, "rejected": ["no", "no"]}), path
    )
    message = f"{path} row 1 (0-based), field 'chosen': text is not valid UTF-8"
    assert _error(path) == message + HINT
    records, report = read_preferences(path, on_bad_row="skip")
    assert [r.source_row for r in records] == [0]
    assert report.skipped == {"invalid UTF-8": 1}


def test_skip_mode_counts_each_reason(write_jsonl):
    path = write_jsonl(
        [
            GOOD,
            {"prompt": "hi", "chosen": "yes", "rejected": ""},
            {"prompt": "hi", "chosen": "", "rejected": "no"},
            {"prompt": "hi", "chosen": "yes", "rejected": "yes"},
            "{not json",
            {"prompt": "hi", "chosen": "yes"},
            GOOD,
        ]
    )
    records, report = read_preferences(path, on_bad_row="skip")
    assert len(records) == 2 and (report.rows_read, report.rows_kept) == (7, 2)
    assert report.skipped == {
        "empty response": 2,
        "identical responses": 1,
        "malformed JSON": 1,
        "missing field": 1,
    }
    assert len(report.examples) == 5
    summary = report.summary()
    assert f"{path}: kept 2 of 7 rows" in summary and "skipped 2 row(s): empty response" in summary


def test_one_k_per_dataset(write_jsonl):
    path = write_jsonl(
        [
            {"prompt": "a", "responses": ["x", "y"]},
            {"prompt": "b", "responses": ["x", "y"]},
            {"prompt": "c", "responses": ["x", "y", "z"]},
        ]
    )
    detail = (
        "3 responses, but most rows have 2; a dataset has one K "
        "(split the file by number of responses)"
    )
    assert _error(path) == f"{path} line 3, field 'responses': {detail}{HINT}"
    records, report = read_preferences(path, on_bad_row="skip")
    assert [r.prompt for r in records] == ["a", "b"] and report.skipped == {"different K": 1}


def test_chat_messages_are_read(write_jsonl):
    prompt = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]
    path = write_jsonl(
        [{"prompt": prompt, "chosen": "yes", "rejected": [{"role": "assistant", "content": "no"}]}]
    )
    (record,), _ = read_preferences(path)
    assert record.is_chat and record.prompt == prompt
    # a plain-string response to a chat prompt becomes one assistant message
    assert record.responses == [
        [{"role": "assistant", "content": "yes"}],
        [{"role": "assistant", "content": "no"}],
    ]


def test_bad_chat_message_is_named(write_jsonl):
    path = write_jsonl(
        [{"prompt": [{"role": "user", "content": "hi"}], "chosen": "yes", "rejected": "no"}]
        + [{"prompt": [{"role": "user"}], "chosen": "yes", "rejected": "no"}]
    )
    detail = "message 0: 'content' must be a string, got NoneType None"
    assert _error(path) == f"{path} line 2, field 'prompt': {detail}{HINT}"


def test_file_level_errors(tmp_path, write_jsonl):
    assert _error(tmp_path / "none.jsonl") == f"{tmp_path / 'none.jsonl'}: no such file"
    (tmp_path / "folder.jsonl").mkdir()
    assert _error(tmp_path / "folder.jsonl") == (
        f"{tmp_path / 'folder.jsonl'} is a directory; give the preference file in it"
    )
    assert _error(tmp_path / "x.csv") == (
        f"{tmp_path / 'x.csv'}: unknown file type; expected one of .parquet, .jsonl"
    )
    path = write_jsonl([{"prompt": "hi", "chosen": "yes"}])
    assert _error(path) == (
        f"{path}: pairs need columns prompt, chosen, rejected; no 'rejected' column "
        "(columns: prompt, chosen)"
    )
    path = write_jsonl([{"question": "hi", "answer": "yes"}])
    assert _error(path).startswith(
        f"{path}: fits no preference shape (columns: question, answer); tried pairs "
    )
    path = write_jsonl(["", "  "])
    assert _error(path) == f"{path}: the file is empty"
    path = write_jsonl(["", "[1, 2]", "{"])
    assert _error(path) == f"{path} line 2: malformed JSON: expected an object, got list"


def test_write_preferences_round_trip_and_checks(tmp_path):
    rows = [{"prompt": "a", "responses": ["x", "y"], "scores": [1.0, 0.5]}]
    path = write_preferences(tmp_path / "out" / "r.parquet", rows)
    assert pq.read_table(path).to_pylist() == rows
    assert list((tmp_path / "out").iterdir()) == [path]  # no temporary file left behind
    with pytest.raises(ValueError, match=r"rows\[1\] has keys \['prompt'\], rows\[0\] has"):
        write_preferences(tmp_path / "p.parquet", [*rows, {"prompt": "b"}])
    with pytest.raises(ValueError, match="name the file \\*.parquet"):
        write_preferences(tmp_path / "p.jsonl", rows)

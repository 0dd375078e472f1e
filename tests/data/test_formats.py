"""Preference data in the ecosystem's shapes: TRL conversations, Anthropic HH, UltraFeedback."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf.config import ConfigError, from_dict
from rlhf.data import DataConfig, DataError, load_preferences, read_preferences

from .helpers import BOS, EOS, V

HINT = " (on_bad_row='skip' skips and counts such rows)"


def _msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


SYSTEM, USER, YES = _msg("system", "be"), _msg("user", "hi"), _msg("assistant", "yes")
NO = _msg("assistant", "no")


def _error(path, **settings) -> str:
    with pytest.raises(DataError) as caught:
        read_preferences(path, **settings)
    return str(caught.value)


def _read(path, **settings):
    records, report = read_preferences(path, **settings)
    return [(r.prompt, r.responses, r.fields) for r in records], report


def test_trl_conversational_with_explicit_prompt_is_pairs(write_jsonl):
    path = write_jsonl([{"prompt": [USER], "chosen": [YES], "rejected": [NO]}])
    assert _read(path)[0] == [([USER], [[YES], [NO]], ("chosen", "rejected"))]


def test_a_text_prompt_beside_whole_conversations_is_their_shared_part(write_jsonl):
    # HuggingFaceH4/ultrafeedback_binarized's shape: TRL reads the prompt from the conversations
    path = write_jsonl([{"prompt": "hi", "chosen": [USER, YES], "rejected": [USER, NO]}])
    assert _read(path)[0] == [([USER], [[YES], [NO]], ("chosen", "rejected"))]


def test_the_data_format_key_takes_the_shapes():
    assert from_dict(DataConfig, {"path": "a.jsonl", "format": "hh"}).format == "hh"
    with pytest.raises(ConfigError, match="'csv' is not one of 'auto', 'pairs', 'ranking'"):
        from_dict(DataConfig, {"path": "a.jsonl", "format": "csv"})


def test_conversations_share_their_leading_messages(write_jsonl):
    second = _msg("user", "the cat")
    path = write_jsonl(
        [
            {"chosen": [SYSTEM, USER, YES], "rejected": [SYSTEM, USER, NO]},
            # multi-turn: the prompt is everything before the first message that differs
            {"chosen": [USER, YES, second, YES], "rejected": [USER, YES, second, NO]},
        ]
    )
    assert _read(path)[0] == [
        ([SYSTEM, USER], [[YES], [NO]], ("chosen", "rejected")),
        ([USER, YES, second], [[YES], [NO]], ("chosen", "rejected")),
    ]
    assert _read(path, format="conversations")[0] == _read(path)[0]


@pytest.mark.parametrize(
    ("bad", "field", "detail"),
    [
        (
            {"chosen": [USER, YES], "rejected": [_msg("user", "no"), YES]},
            "rejected",
            "'chosen' and 'rejected' differ from their first message, so they share no prompt "
            "(the prompt is the leading messages both hold; or give a 'prompt' field)",
        ),
        (
            {"chosen": [SYSTEM, USER, YES], "rejected": [SYSTEM, _msg("user", "no"), YES]},
            "chosen",
            "message 1 (the first after the messages both share) is a 'user' message; a response "
            "starts with an 'assistant' message",
        ),
        (
            {"chosen": [USER, YES], "rejected": [USER, YES, USER, NO]},
            "chosen",
            "nothing after the messages both share",
        ),
        ({"chosen": [USER, YES], "rejected": [USER, YES]}, "rejected", "same as 'chosen'"),
        (
            {"chosen": "yes", "rejected": [USER, NO]},
            "chosen",
            "expected a whole conversation as chat messages (a list of {role, content}), "
            "got str 'yes'",
        ),
    ],
)
def test_bad_conversations_are_named(write_jsonl, bad, field, detail):
    path = write_jsonl([{"chosen": [USER, YES], "rejected": [USER, NO]}, bad])
    assert _error(path) == f"{path} line 2, field {field!r}: {detail}{HINT}"
    records, report = read_preferences(path, on_bad_row="skip")
    assert len(records) == 1 and report.rows_skipped == 1


def test_hh_transcripts_prompt_is_up_to_the_last_shared_assistant_turn(write_jsonl):
    turn = "\n\nHuman: hi\n\nAssistant:"
    path = write_jsonl(
        [
            {"chosen": turn + " yes", "rejected": turn + " no"},
            # responses that share their first letters: the prompt still ends at the turn
            {"chosen": turn + " good", "rejected": turn + " gone"},
            # two turns, the first shared whole: the prompt holds it
            {
                "chosen": turn + " yes\n\nHuman: the cat\n\nAssistant: sat",
                "rejected": turn + " yes\n\nHuman: the cat\n\nAssistant: mat",
            },
        ]
    )
    rows, _ = _read(path)
    assert rows == [
        (turn, [" yes", " no"], ("chosen", "rejected")),
        (turn, [" good", " gone"], ("chosen", "rejected")),
        (turn + " yes\n\nHuman: the cat\n\nAssistant:", [" sat", " mat"], ("chosen", "rejected")),
    ]


@pytest.mark.parametrize(
    ("bad", "field", "detail"),
    [
        (
            {
                "chosen": "\n\nHuman: hi\n\nAssistant: yes",
                "rejected": "\n\nHuman: no\n\nAssistant: yes",
            },
            "rejected",
            "'chosen' and 'rejected' share no '\\n\\nAssistant:' turn; the prompt of a "
            "transcript is everything up to the last '\\n\\nAssistant:' both share",
        ),
        (
            {
                "chosen": "\n\nHuman: hi\n\nAssistant: yes",
                "rejected": "\n\nHuman: hi\n\nAssistant:",
            },
            "rejected",
            "empty response after the shared prompt",
        ),
        (
            {"chosen": [_msg("user", "hi")], "rejected": "\n\nHuman: hi\n\nAssistant: no"},
            "chosen",
            "expected an Anthropic-HH transcript string, got a list (whole conversations as "
            "chat messages are the 'conversations' format)",
        ),
    ],
)
def test_bad_transcripts_are_named(write_jsonl, bad, field, detail):
    good = {"chosen": "\n\nHuman: a\n\nAssistant: yes", "rejected": "\n\nHuman: a\n\nAssistant: no"}
    path = write_jsonl([good, bad])
    assert _error(path) == f"{path} line 2, field {field!r}: {detail}{HINT}"


def test_ultrafeedback_ratings_rank_the_completions(tmp_path):
    def completion(text, overall, fine):
        return {"response": text, "overall_score": overall, "fine-grained_score": fine}

    rows = [
        {
            "instruction": "hi",
            "completions": [completion("yes", 7.5, 2.0), completion("no", 3.0, 4.0)]
            + [completion("good", 9.0, 3.0)],
        },
        # sat and mat tie at 5: the row goes under ties=drop_row; under drop_response mat goes
        # and K is 3, as in the first row
        {
            "instruction": "the cat",
            "completions": [completion("sat", 5.0, 1.0), completion("mat", 5.0, 2.0)]
            + [completion("on", 6.0, 3.0), completion("the", 1.0, 0.5)],
        },
    ]
    path = tmp_path / "uf.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)  # completions: a list of structs
    fields = ("completions[2].response", "completions[0].response", "completions[1].response")
    got, report = _read(path)
    assert got == [("hi", ["good", "yes", "no"], fields)]
    assert report.tied_rows_dropped == 1
    got, report = _read(path, ties="drop_response")
    fields = ("completions[2].response", "completions[0].response", "completions[3].response")
    assert got[1] == ("the cat", ["on", "sat", "the"], fields)
    assert report.tied_responses_dropped == 1
    # another rating: the fine-grained score orders the first row no, good, yes
    got, _ = _read(path, rating_key="fine-grained_score", on_bad_row="skip")
    assert got[0][1] == ["no", "good", "yes"]


@pytest.mark.parametrize(
    ("bad", "field", "detail"),
    [
        (
            {
                "prompt": "hi",
                "completions": [{"response": "yes", "overall_score": 1}, {"response": "no"}],
            },
            "completions[1].overall_score",
            "missing or null (set data.rating_key to the field that rates a completion; its "
            "fields: response)",
        ),
        (
            {
                "prompt": "hi",
                "completions": [{"response": r, "overall_score": "high"} for r in ("a", "b")],
            },
            "completions[0].overall_score",
            "not a finite number: 'high'",
        ),
        (
            {"prompt": "hi", "completions": "yes"},
            "completions",
            "expected a list of {response, overall_score} mappings, got str 'yes'",
        ),
        (
            {"prompt": "hi", "completions": [{"response": "", "overall_score": 1}] * 2},
            "completions[0].response",
            "empty response",
        ),
    ],
)
def test_bad_ultrafeedback_rows_are_named(write_jsonl, bad, field, detail):
    good = {
        "prompt": "hi",
        "completions": [
            {"response": "yes", "overall_score": 2},
            {"response": "no", "overall_score": 1},
        ],
    }
    path = write_jsonl([good, bad])
    assert _error(path) == f"{path} line 2, field {field!r}: {detail}{HINT}"


def test_a_file_that_fits_no_shape_names_the_shapes_tried(write_jsonl):
    path = write_jsonl([{"question": "hi", "answer": "yes"}])
    message = _error(path)
    assert message.startswith(
        f"{path}: fits no preference shape (columns: question, answer); tried "
    )
    for shape in (
        "pairs {prompt, chosen, rejected}",
        "ranking",
        "conversations",
        "hh",
        "ultrafeedback",
    ):
        assert shape in message
    assert message.endswith("or set data.format to read it as one")
    # chosen and rejected strings without HH turns: neither a transcript nor a conversation
    path = write_jsonl([{"chosen": "yes", "rejected": "no"}], "plain.jsonl")
    assert "fits no preference shape (columns: chosen, rejected)" in _error(path)


def test_the_first_readable_row_decides_and_format_can_name_the_shape(write_jsonl):
    turn = "\n\nHuman: hi\n\nAssistant:"
    path = write_jsonl(["{not json", {"chosen": turn + " yes", "rejected": turn + " no"}])
    got, report = _read(path, on_bad_row="skip")
    assert got == [(turn, [" yes", " no"], ("chosen", "rejected"))]
    assert report.skipped == {"malformed JSON": 1}
    # named: a row of another shape is a bad row of that format
    path = write_jsonl([{"chosen": [USER, YES], "rejected": [USER, NO]}], "conv.jsonl")
    assert _error(path, format="hh") == (
        f"{path} line 1, field 'chosen': expected an Anthropic-HH transcript string, got a list "
        f"(whole conversations as chat messages are the 'conversations' format){HINT}"
    )
    assert _error(path, format="ranking") == (
        f"{path}: format 'ranking' ({{prompt, responses[, scores]}}) needs a 'prompt' column "
        "(columns: chosen, rejected)"
    )
    assert "needs a 'instruction' column" in _error(path, format="ultrafeedback")


def test_conversations_and_transcripts_tokenize_like_pairs(write_jsonl, chat_tokenizer, tokenizer):
    cfg = from_dict(DataConfig, {"path": "unused.jsonl"})
    path = write_jsonl([{"chosen": [USER, YES], "rejected": [USER, NO]}])
    table, _ = load_preferences(path, chat_tokenizer, cfg)
    # "<bos> user : hi assistant :" then " yes<eos>" / " no<eos>" from the chat template
    assert table["prompt_ids"].to_pylist() == [
        [BOS, V["user"], V[":"], V["hi"], V["assistant"], V[":"]]
    ]
    assert table["response_ids"].to_pylist() == [[[V["yes"], EOS], [V["no"], EOS]]]
    # an HH prompt is plain text: the tokenizer's BOS, then the words ("Human:" is unknown)
    path = write_jsonl([{"chosen": "hi : yes", "rejected": "hi : no"}], "x.jsonl")
    with pytest.raises(DataError, match="fits no preference shape"):
        load_preferences(path, tokenizer, cfg)

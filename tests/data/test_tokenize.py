"""Tokenization: response ids follow the prompt in the joint sequence, EOS, BOS, truncation."""

from __future__ import annotations

import pytest

from rlhf.data import DataConfig, DataError, load_preferences, read_preferences, source_of
from rlhf.data.tokenize import special_prefix, tokenize_preferences

from .helpers import BOS, EOS, UNK, V

HINT = " (on_bad_row='skip' skips and counts such rows)"


def _tokenize(tokenizer, path, **settings):
    records, report = read_preferences(path, on_bad_row=settings.get("on_bad_row", "error"))
    settings = {"max_prompt_length": 16, "max_length": 32, **settings}
    return tokenize_preferences(records, tokenizer, report, **settings), report


def test_special_prefix_is_bos(tokenizer):
    assert special_prefix(tokenizer) == [BOS]


def test_response_ids_follow_prompt_in_joint_sequence(tokenizer, write_jsonl):
    path = write_jsonl([{"prompt": "the cat", "chosen": " sat on the mat", "rejected": " sat"}])
    table, report = _tokenize(tokenizer, path)
    (row,) = table.to_pylist()
    assert row["prompt_ids"] == [BOS, V["the"], V["cat"]]
    assert row["response_ids"] == [[V["sat"], V["on"], V["the"], V["mat"], EOS], [V["sat"], EOS]]
    joint = tokenizer("the cat sat on the mat")["input_ids"]
    assert row["prompt_ids"] + row["response_ids"][0][:-1] == joint
    assert row["num_responses"] == 2 and row["source_row"] == 1
    assert report.join_fallbacks == 0 and report.rows_kept == 1
    # BOS only at the start of the prompt, EOS once at the end of each response
    for response in row["response_ids"]:
        sequence = row["prompt_ids"] + response
        assert sequence.count(BOS) == 1 and sequence.count(EOS) == 1 and sequence[-1] == EOS


def test_merge_at_the_join_falls_back_and_is_counted(tokenizer, write_jsonl):
    # "the cat" + "sat" is "the catsat": the joint ids are [bos, the, <unk>], which do not start
    # with the prompt's [bos, the, cat]; the response is tokenized on its own instead
    path = write_jsonl([{"prompt": "the cat", "chosen": "sat", "rejected": " on"}])
    assert tokenizer("the catsat")["input_ids"] == [BOS, V["the"], UNK]
    table, report = _tokenize(tokenizer, path)
    (row,) = table.to_pylist()
    assert row["prompt_ids"] == [BOS, V["the"], V["cat"]]
    assert row["response_ids"] == [[V["sat"], EOS], [V["on"], EOS]]
    assert report.join_fallbacks == 1
    assert "1 response(s) tokenized apart" in report.summary()


def test_long_response_is_cut_from_its_end(tokenizer, write_jsonl):
    path = write_jsonl([{"prompt": "hi", "chosen": " a b c d", "rejected": " no"}])
    # prompt [bos, hi] is 2 tokens; max_length 5 leaves 3 for each response
    table, report = _tokenize(tokenizer, path, max_prompt_length=4, max_length=5)
    (row,) = table.to_pylist()
    assert row["prompt_ids"] == [BOS, V["hi"]]
    assert row["response_ids"] == [[V["a"], V["b"], V["c"]], [V["no"], EOS]]
    assert report.truncated_responses == 1


def test_prompt_too_long_is_a_bad_row(tokenizer, write_jsonl):
    path = write_jsonl(
        [
            {"prompt": "hi", "chosen": " yes", "rejected": " no"},
            {"prompt": "a b c d e", "chosen": " yes", "rejected": " no"},
        ]
    )
    detail = "prompt is 6 tokens, more than max_prompt_length=4 (raise it, or set prompt_truncation='left')"
    with pytest.raises(DataError) as info:
        _tokenize(tokenizer, path, max_prompt_length=4, max_length=8)
    assert str(info.value) == f"{path} line 2, field 'prompt': {detail}{HINT}"
    table, report = _tokenize(tokenizer, path, max_prompt_length=4, max_length=8, on_bad_row="skip")
    assert table.column("source_row").to_pylist() == [1]
    assert report.skipped == {"prompt too long": 1} and report.rows_kept == 1


def test_a_sequence_longer_than_the_model_can_score_is_a_bad_row(tokenizer, write_jsonl):
    path = write_jsonl(
        [
            {"prompt": "hi", "chosen": " yes", "rejected": " no"},  # [bos, hi] + [yes, eos]: 4
            {"prompt": "hi", "chosen": " a b c", "rejected": " no"},  # [bos, hi, a, b, c, eos]: 6
        ]
    )
    # vLLM generates a token after the sequence it scores: a 6-token context scores 5 tokens.
    detail = (
        "prompt + response is 6 tokens; the model scores at most 5 (its context length 6, less "
        "the one token vLLM generates): set data.max_length to 5 or less to cut such responses"
    )
    with pytest.raises(DataError) as info:
        _tokenize(tokenizer, path, max_prompt_length=4, max_length=8, context_length=6)
    assert str(info.value) == f"{path} line 2, field 'chosen': {detail}{HINT}"
    table, report = _tokenize(
        tokenizer, path, max_prompt_length=4, max_length=8, context_length=6, on_bad_row="skip"
    )
    assert table.column("source_row").to_pylist() == [1]
    assert report.skipped == {"longer than the model's context": 1}
    table, _ = _tokenize(tokenizer, path, max_prompt_length=4, max_length=8, context_length=7)
    assert table.num_rows == 2  # 6 tokens fit a context of 7
    table, report = _tokenize(tokenizer, path, max_prompt_length=4, max_length=5, context_length=6)
    assert table.num_rows == 2 and report.truncated_responses == 1  # max_length cut it first


def test_prompt_truncated_from_the_left_keeps_bos(tokenizer, write_jsonl):
    path = write_jsonl([{"prompt": "a b c d e", "chosen": " yes", "rejected": " no"}])
    table, report = _tokenize(
        tokenizer, path, max_prompt_length=4, max_length=8, prompt_truncation="left"
    )
    (row,) = table.to_pylist()
    assert row["prompt_ids"] == [BOS, V["c"], V["d"], V["e"]]
    assert row["response_ids"] == [[V["yes"], EOS], [V["no"], EOS]]
    assert report.truncated_prompts == 1


def test_identical_after_truncation_is_a_bad_row(tokenizer, write_jsonl):
    path = write_jsonl([{"prompt": "hi", "chosen": " a b c d", "rejected": " a b c e"}])
    with pytest.raises(DataError) as info:
        _tokenize(tokenizer, path, max_prompt_length=2, max_length=5)
    detail = "same tokens as 'chosen' after truncation to max_length=5 (raise max_length)"
    assert str(info.value) == f"{path} line 1, field 'rejected': {detail}{HINT}"


def test_chat_template_prompt_and_response(chat_tokenizer, write_jsonl):
    prompt = [{"role": "user", "content": "hi"}]
    rejected = [{"role": "assistant", "content": "no"}]
    path = write_jsonl([{"prompt": prompt, "chosen": "yes", "rejected": rejected}])
    table, report = _tokenize(chat_tokenizer, path)
    (row,) = table.to_pylist()
    # "<bos> user : hi assistant :" -- the template writes BOS; no second one is added
    assert row["prompt_ids"] == [BOS, V["user"], V[":"], V["hi"], V["assistant"], V[":"]]
    # the template ends the assistant turn with <eos>: it is not doubled
    assert row["response_ids"] == [[V["yes"], EOS], [V["no"], EOS]]
    assert report.join_fallbacks == 0


def test_a_response_in_another_role_is_named_not_blamed_on_the_template(
    chat_tokenizer, write_jsonl
):
    # The template renders any role, so the row gets as far as splitting the response off.
    prompt = [{"role": "user", "content": "hi"}]
    rejected = [{"role": "assistent", "content": "no"}]
    path = write_jsonl([{"prompt": prompt, "chosen": "yes", "rejected": rejected}])
    with pytest.raises(DataError) as info:
        _tokenize(chat_tokenizer, path)
    assert str(info.value) == (
        f"{path} line 1, field 'rejected': its first message has role 'assistent'; a response "
        f"is the assistant's turn (role 'assistant'), the turn the prompt's generation prompt "
        f"opens{HINT}"
    )


def test_chat_messages_without_template_is_a_clear_error(tokenizer, write_jsonl):
    prompt = [{"role": "user", "content": "hi"}]
    path = write_jsonl([{"prompt": prompt, "chosen": "yes", "rejected": "no"}])
    with pytest.raises(DataError) as info:
        _tokenize(tokenizer, path, on_bad_row="skip")  # not a bad row: skipping cannot help
    assert str(info.value) == (
        f"{path} line 1, field 'prompt': chat messages need a tokenizer with a chat template, "
        "and this tokenizer has none; set tokenizer.chat_template or give prompts and "
        "responses as plain text"
    )


def test_load_preferences_ranking_table(tokenizer, tmp_path):
    from rlhf.data import write_preferences

    path = write_preferences(
        tmp_path / "r.parquet",
        [
            {"prompt": "hi", "responses": [" no", " yes", " good"], "scores": [0.0, 2.0, 1.0]},
            {"prompt": "the cat", "responses": [" sat", ""], "scores": [1.0, 0.0]},
            {"prompt": "the cat", "responses": [" sat", " on", " mat"], "scores": [1.0, 3.0, 2.0]},
        ],
    )
    cfg = DataConfig(path=str(path), on_bad_row="skip")
    table, report = load_preferences(path, tokenizer, cfg)
    assert table.column("response_ids").to_pylist() == [
        [[V["yes"], EOS], [V["good"], EOS], [V["no"], EOS]],
        [[V["on"], EOS], [V["mat"], EOS], [V["sat"], EOS]],
    ]
    assert table.column("num_responses").to_pylist() == [3, 3]
    assert table.column("source_row").to_pylist() == [0, 2]
    assert source_of(table, 1) == f"{path} row 2 (0-based)"
    assert report.skipped == {"empty response": 1}


def test_load_preferences_with_no_usable_row(tokenizer, write_jsonl):
    path = write_jsonl([{"prompt": "hi", "chosen": "", "rejected": "no"}])
    cfg = DataConfig(path=str(path), on_bad_row="skip")
    with pytest.raises(DataError, match=r"no usable rows\n.*kept 0 of 1 rows"):
        load_preferences(path, tokenizer, cfg)


def test_project_tokenizer_keeps_the_join(write_jsonl):
    task = pytest.importorskip("rlhf.task", reason="the project's tokenizer is not built yet")
    tokenizer = task.build_tokenizer()
    prompt = "i went to see a movie . i have to say it"
    path = write_jsonl([{"prompt": prompt, "chosen": " was good .", "rejected": " was bad ."}])
    table, report = _tokenize(tokenizer, path)
    (row,) = table.to_pylist()
    assert row["prompt_ids"] == tokenizer(prompt)["input_ids"]
    for response, text in zip(row["response_ids"], [" was good .", " was bad ."], strict=True):
        assert row["prompt_ids"] + response[:-1] == tokenizer(prompt + text)["input_ids"]
        assert response[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in response
    assert report.join_fallbacks == 0

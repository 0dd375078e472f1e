"""Prompts from the user's data: files and dataset directories, checks, rounds, held-out prompts."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers.processors import TemplateProcessing

from rlhf.config import ConfigError, from_dict
from rlhf.data import DataError
from rlhf.data.prompts import (
    EmbeddedPrompts,
    FilePrompts,
    Prompt,
    PromptsConfig,
    _epoch_order,
    draw_prompts,
    load_prompts,
    open_prompts,
)
from rlhf.task import make_prompts

from .helpers import BOS, V

HINT = " (on_bad_row='skip' skips and counts such rows)"
USER_HI = [{"role": "user", "content": "hi"}]


def _config(path, **settings) -> PromptsConfig:
    return from_dict(PromptsConfig, {"path": str(path), **settings})


def _error(path, tokenizer, **settings) -> str:
    with pytest.raises(DataError) as caught:
        open_prompts(_config(path, **settings), 0, tokenizer)
    return str(caught.value)


def test_text_prompts_from_jsonl_and_parquet(tmp_path, write_jsonl, tokenizer):
    rows = [{"prompt": "the cat", "id": 1}, {"prompt": "hi", "id": 2}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    for path, first_row in ((write_jsonl(rows, "p.jsonl"), 1), (tmp_path / "p.parquet", 0)):
        source = open_prompts(_config(path), 0, tokenizer)
        prompts = sorted(source.first(10), key=lambda p: p.source_row)
        # plain text: the tokenizer's BOS in front, as vLLM tokenizes a string prompt
        assert prompts == [
            Prompt("the cat", "the cat", [BOS, V["the"], V["cat"]], first_row),
            Prompt("hi", "hi", [BOS, V["hi"]], first_row + 1),
        ]
        assert source.summary() == f"{path}: kept 2 of 2 rows"


def test_chat_prompts_render_with_the_generation_prompt(write_jsonl, chat_tokenizer):
    path = write_jsonl([{"messages": USER_HI}], "p.jsonl")
    (prompt,) = open_prompts(_config(path, field="messages"), 0, chat_tokenizer).first(1)
    assert prompt.given == USER_HI  # what the reward function receives
    # the template wrote the BOS: none added on top
    assert prompt.ids == [BOS, V["user"], V[":"], V["hi"], V["assistant"], V[":"]]
    # the rendering "<bos> user : hi assistant :" less the BOS a sampler adds to a string prompt
    assert prompt.text == " user : hi assistant :"
    assert chat_tokenizer(prompt.text)["input_ids"] == prompt.ids
    # a tokenizer that adds no BOS: the sampler is given the rendering as it is
    chat_tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="$A")
    (prompt,) = open_prompts(_config(path, field="messages"), 0, chat_tokenizer).first(1)
    assert prompt.text == "<bos> user : hi assistant :"
    assert chat_tokenizer(prompt.text)["input_ids"] == prompt.ids


def test_dataset_directories(tmp_path, tokenizer):
    import datasets

    one = tmp_path / "one"
    datasets.Dataset.from_dict({"question": ["hi", "the cat"]}).save_to_disk(str(one))
    source = open_prompts(_config(one, field="question"), 0, tokenizer)
    assert sorted(p.given for p in source.first(5)) == ["hi", "the cat"]
    both = tmp_path / "both"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"prompt": ["hi", "the cat", "yes"]}),
            "test": datasets.Dataset.from_dict({"prompt": ["no"]}),
        }
    ).save_to_disk(str(both))
    source = open_prompts(_config(both, eval_path=str(both)), 0, tokenizer)
    assert sorted(p.given for p in source.first(5)) == ["hi", "the cat", "yes"]
    assert [p.given for p in source.held_out(5)] == ["no"]
    assert _error(both, tokenizer, split="validation") == (
        f"prompts.path: {both} has splits train, test, not 'validation'; set prompts.split "
        "to one of them"
    )
    # a dataset's rows are 0-based: a bad one is named like a Parquet row
    bad = tmp_path / "bad"
    datasets.Dataset.from_dict({"prompt": ["hi", " "]}).save_to_disk(str(bad))
    assert _error(bad, tokenizer) == f"{bad} row 1 (0-based), field 'prompt': empty prompt{HINT}"


@pytest.mark.parametrize(
    ("bad", "detail"),
    [
        ({"prompt": ""}, "empty prompt"),
        ({"prompt": None}, "missing or null"),
        ({"other": "x"}, "missing or null"),
        ({"prompt": 5}, "expected a string or a list of chat messages, got int 5"),
        (
            {"prompt": [{"role": "user"}]},
            "message 0: 'content' must be a string, got NoneType None",
        ),
        (
            {"prompt": "the cat sat on the mat"},
            "prompt is 7 tokens, more than prompts.max_length=6 (raise it, or skip such rows "
            "with prompts.on_bad_row=skip)",
        ),
    ],
)
def test_bad_rows_are_named_or_counted(write_jsonl, tokenizer, bad, detail):
    path = write_jsonl([{"prompt": "hi"}, bad, {"prompt": "the cat"}], "p.jsonl")
    assert _error(path, tokenizer, max_length=6) == f"{path} line 2, field 'prompt': {detail}{HINT}"
    source = open_prompts(_config(path, max_length=6, on_bad_row="skip"), 0, tokenizer)
    assert sorted(p.source_row for p in source.first(5)) == [1, 3]
    assert source.summary().splitlines()[0] == f"{path}: kept 2 of 3 rows"
    assert f"{path} line 2, field 'prompt': {detail}" in source.summary()


def test_a_prompt_set_holds_one_kind(write_jsonl, chat_tokenizer):
    path = write_jsonl([{"prompt": "hi"}, {"prompt": USER_HI}], "p.jsonl")
    assert _error(path, chat_tokenizer) == (
        f"{path} line 2, field 'prompt': chat messages, but the first prompt is plain text; "
        f"a prompt set holds one kind{HINT}"
    )


def test_file_level_errors(tmp_path, write_jsonl, tokenizer):
    path = write_jsonl([{"question": "hi"}], "p.jsonl")
    assert _error(path, tokenizer) == (
        f"{path}: no 'prompt' column (columns: question); set prompts.field to the column that "
        "holds the prompts"
    )
    path = write_jsonl([{"prompt": ""}, {"prompt": " "}], "empty.jsonl")
    assert _error(path, tokenizer, on_bad_row="skip").startswith(
        f"{path}: no usable prompts (prompts.path)\n{path}: kept 0 of 2 rows\n"
    )
    path = write_jsonl([], "nothing.jsonl")
    assert _error(path, tokenizer) == f"{path}: the file is empty"
    path = tmp_path / "no_rows.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    assert _error(path, tokenizer) == (
        f"{path}: no usable prompts (prompts.path)\n{path}: kept 0 of 0 rows"
    )
    path = write_jsonl([{"prompt": USER_HI}], "chat.jsonl")
    assert _error(path, tokenizer) == (
        f"{path} line 1, field 'prompt': chat messages need a tokenizer with a chat template, "
        "and this tokenizer has none; give the model directory a chat template "
        "(tokenizer_config.json 'chat_template') or give prompts as plain text"
    )
    assert _error(tmp_path / "none.jsonl", tokenizer).startswith(
        f"prompts.path: {tmp_path / 'none.jsonl'}: no such file"
    )
    (tmp_path / "x.txt").write_text("hi\n")
    assert _error(tmp_path / "x.txt", tokenizer) == (
        f"prompts.path: {tmp_path / 'x.txt'}: not a prompt file (.parquet, .jsonl) nor a "
        "directory written by datasets.Dataset.save_to_disk"
    )


def test_rounds_walk_seeded_epochs_and_resume_at_the_same_place():
    prompts = [Prompt(f"p{i}", f"p{i}") for i in range(5)]
    source = FilePrompts(prompts, [], seed=3)
    rounds = [[p.given for p in source.for_round(r, 3)] for r in range(4)]  # 12 of 5: 3 epochs
    walk = [given for chunk in rounds for given in chunk]
    names = sorted(p.given for p in prompts)
    assert sorted(walk[:5]) == names and sorted(walk[5:10]) == names  # each epoch: all, once
    assert walk[:5] != walk[5:10]  # a new order each epoch (seeded by seed and epoch)
    # a resumed run (a new source, nothing cached) draws round 3 exactly as before
    _epoch_order.cache_clear()
    assert [p.given for p in FilePrompts(prompts, [], seed=3).for_round(3, 3)] == rounds[3]
    assert [p.given for p in FilePrompts(prompts, [], seed=4).for_round(0, 5)] != walk[:5]
    assert [p.given for p in source.first(50)] == walk[:5]  # first: at most one epoch


def test_held_out_rows_do_not_depend_on_the_seed(write_jsonl, tokenizer):
    path = write_jsonl([{"prompt": w} for w in ("a", "b", "c", "d", "e", "f")], "p.jsonl")
    held = [
        [p.given for p in open_prompts(_config(path, eval_size=2), seed, tokenizer).held_out(9)]
        for seed in (0, 1)
    ]
    assert held[0] == held[1] and len(held[0]) == 2
    source = open_prompts(_config(path, eval_size=2), 0, tokenizer)
    train = {p.given for p in source.first(10)}
    assert train | set(held[0]) == set("abcdef") and not train & set(held[0])
    assert source.held_out(1) == source.held_out(2)[:1]
    assert _error(path, tokenizer, eval_size=6) == (
        f"{path}: prompts.eval_size 6 leaves no training prompts (6 usable rows); lower it or "
        "give prompts.eval_path"
    )
    with pytest.raises(DataError, match=r"there are none \(prompts.eval_size is 0\)"):
        open_prompts(_config(path, eval_size=0), 0, tokenizer, needs_held_out=True).held_out(4)


def test_an_online_job_holds_out_five_percent_when_the_config_does_not_say(write_jsonl, tokenizer):
    words = [f"w{i}" for i in range(50)]
    path = write_jsonl([{"prompt": w} for w in words], "p.jsonl")
    source = open_prompts(_config(path), 0, tokenizer, needs_held_out=True)
    held = [p.given for p in source.held_out(10)]
    assert len(held) == 2  # 5% of 50 (rounded), the rows eval_size=2 holds out
    assert held == [p.given for p in open_prompts(_config(path, eval_size=2), 0, tokenizer).held]
    assert not {p.given for p in source.first(50)} & set(held)
    assert source.summary().splitlines()[1] == (
        f"{path}: held out 2 of 50 prompts for the eval/ metrics (5%, at least 1, as "
        "prompts.eval_size and prompts.eval_path are unset)"
    )
    two = write_jsonl([{"prompt": "a"}, {"prompt": "b"}], "two.jsonl")
    assert len(open_prompts(_config(two), 0, tokenizer, needs_held_out=True).held) == 1
    # make-data and sample (needs_held_out off) keep every row for drawing
    assert not open_prompts(_config(path), 0, tokenizer).has_held_out
    one = write_jsonl([{"prompt": "a"}], "one.jsonl")
    with pytest.raises(DataError) as caught:
        open_prompts(_config(one), 0, tokenizer, needs_held_out=True)
    assert str(caught.value) == (
        f"{one}: 1 usable prompt, and an online job holds out prompts for its eval/ metrics "
        "(prompts.eval_size unset: 5%, at least 1); add prompts or give prompts.eval_path"
    )


def test_held_out_prompts_are_of_the_training_prompts_kind(write_jsonl, chat_tokenizer):
    chat = write_jsonl([{"prompt": USER_HI}], "chat.jsonl")
    text = write_jsonl([{"prompt": "hi"}], "text.jsonl")
    assert _error(chat, chat_tokenizer, eval_path=str(text)) == (
        f"prompts.eval_path: {text} holds plain text and prompts.path chat messages; give "
        "held-out prompts of the same kind"
    )


def test_a_hub_name_offline_says_what_to_do(monkeypatch, tokenizer):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 sets it
    message = _error("someone/prompts", tokenizer)
    assert message.startswith(
        "prompts.path: someone/prompts is not a local file or directory, and the Hugging Face "
        "Hub cannot be reached for a dataset of that name ("
    )
    assert message.endswith(
        "save it with datasets.load_dataset('someone/prompts').save_to_disk(DIR) and set "
        "prompts.path to DIR, or give a .parquet or .jsonl file"
    )


def test_one_off_jobs_draw_a_split():
    train = [Prompt(f"t{i}", f"t{i}") for i in range(3)]
    with_held = FilePrompts(train, [Prompt("h", "h")], seed=0)
    assert [p.given for p in draw_prompts(with_held, 5, "eval")] == ["h"]
    assert [p.given for p in draw_prompts(with_held, 5)] == ["h"]  # sample: held out first
    assert sorted(p.given for p in draw_prompts(with_held, 5, "train")) == ["t0", "t1", "t2"]
    without = FilePrompts(train, [], seed=0)
    assert len(draw_prompts(without, 2)) == 2  # no held-out prompts: the training ones
    with pytest.raises(DataError, match="set prompts.eval_path"):
        draw_prompts(without, 2, "eval")
    embedded = EmbeddedPrompts(seed=1)
    assert [p.given for p in draw_prompts(embedded, 3)] == make_prompts(3, seed=1, split="eval")
    assert [p.given for p in draw_prompts(embedded, 3, "train")] == make_prompts(3, seed=1)


def test_embedded_prompts_are_the_task_prompts_in_their_old_order():
    source = EmbeddedPrompts(seed=2)
    old = make_prompts(3 * 4, seed=2, split="train")  # how the jobs drew them before
    assert [p.given for r in range(3) for p in source.for_round(r, 4)] == old
    assert [p.text for p in EmbeddedPrompts(seed=2).for_round(2, 4)] == old[8:]
    assert [p.given for p in source.held_out(5)] == make_prompts(5, seed=2, split="eval")
    assert source.summary() == ""


def test_config_checks():
    assert from_dict(PromptsConfig, {}).path == "embedded"
    for settings, message in [
        ({"eval_size": 4}, "eval_size applies to a prompt file, but path is 'embedded'"),
        ({"field": "text"}, "field applies to a prompt file"),
        ({"path": "p.jsonl", "eval_size": 2, "eval_path": "e.jsonl"}, "either eval_path or"),
        ({"eval_size": 0}, "eval_size applies to a prompt file"),
        ({"path": "p.jsonl", "eval_size": -1}, "eval_size must be at least 0"),
        ({"path": "p.jsonl", "max_length": 0}, "max_length must be at least 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            from_dict(PromptsConfig, settings)


def test_load_prompts_names_the_config_key(write_jsonl, tokenizer):
    path = write_jsonl([{"prompt": " "}], "e.jsonl")
    with pytest.raises(DataError, match=r"no usable prompts \(prompts.eval_path\)"):
        load_prompts(str(path), "test", "prompt", tokenizer, 8, "skip", key="eval_path")

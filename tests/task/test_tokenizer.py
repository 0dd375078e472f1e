"""The word-level tokenizer: clean round trips, clean joins, incremental decoding."""

from pathlib import Path

import pytest
from tokenizers.decoders import DecodeStream
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from rlhf.task.grammar import make_sft_corpus, vocabulary
from rlhf.task.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return build_tokenizer()


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, str]]:
    return make_sft_corpus(300, seed=0)


def test_special_tokens_and_size(tokenizer: PreTrainedTokenizerBase):
    ids = (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert ids == (0, 1, 2) and tokenizer.unk_token_id == 3
    assert len(tokenizer) == len(vocabulary()) + 4
    assert tokenizer.convert_ids_to_tokens(tokenizer("the film")["input_ids"]) == [
        "<bos>",
        "▁the",
        "▁film",
    ]


def test_round_trip_without_unknown_words(tokenizer, corpus):
    for prompt, completion in corpus:
        text = f"{prompt} {completion}"
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert len(ids) == len(text.split()) + 1  # one token per word, plus <bos>
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_prompt_tokens_are_a_prefix_of_the_joined_tokens(tokenizer, corpus):
    for prompt, completion in corpus:
        prompt_ids = tokenizer(prompt)["input_ids"]
        joined = tokenizer(f"{prompt} {completion}")["input_ids"]
        assert joined[: len(prompt_ids)] == prompt_ids
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        assert joined[len(prompt_ids) :] == completion_ids
        assert tokenizer.decode(completion_ids) == completion


def test_incremental_decoding_matches_decode(tokenizer, corpus):
    backend = tokenizer.backend_tokenizer
    for prompt, completion in corpus[:50]:
        ids = tokenizer(f"{prompt} {completion}")["input_ids"] + [tokenizer.eos_token_id]
        stream = DecodeStream(skip_special_tokens=True)
        pieces = [stream.step(backend, i) for i in ids]
        assert "".join(p for p in pieces if p is not None) == f"{prompt} {completion}"


def test_a_completion_decoded_after_its_prompt_keeps_its_leading_space(tokenizer, corpus):
    """What vLLM returns as a completion's text: the stream has seen the prompt first."""
    backend = tokenizer.backend_tokenizer
    prompt, completion = corpus[0]
    prompt_ids = tokenizer(prompt)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    stream = DecodeStream(skip_special_tokens=True)
    for i in prompt_ids:
        stream.step(backend, i)
    text = "".join(stream.step(backend, i) or "" for i in completion_ids)
    assert text == " " + completion


def test_text_is_normalized_before_splitting(tokenizer):
    messy = "  The film   was GOOD.Really,  good "
    clean = "the film was good . really , good"
    assert tokenizer(messy)["input_ids"] == tokenizer(clean)["input_ids"]
    assert tokenizer.decode(tokenizer(messy)["input_ids"], skip_special_tokens=True) == clean


def test_unknown_words_become_unk(tokenizer):
    ids = tokenizer("the zorblax film")["input_ids"]
    assert ids[2] == tokenizer.unk_token_id and len(ids) == 4


def test_saved_tokenizer_loads_with_auto_tokenizer(tokenizer, corpus, tmp_path: Path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = " ".join(corpus[0])
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert loaded.padding_side == "right" and loaded.model_max_length == 256
    batch = loaded(["the film", "the film was good"], padding=True)["input_ids"]
    assert batch[0][-2:] == [0, 0]  # right padding with <pad>

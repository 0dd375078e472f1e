"""The review grammar: deterministic, disjoint splits, neutral prompts, mixed completions."""

import statistics

import pytest

from rlhf.task.grammar import (
    MAX_COMPLETION_WORDS,
    MAX_PROMPT_WORDS,
    MIN_COMPLETION_WORDS,
    MIN_PROMPT_WORDS,
    make_prompts,
    make_sft_corpus,
    prompt_split,
    vocabulary,
)
from rlhf.task.reward import sentiment_score


def test_same_seed_same_text_other_seed_other_text():
    assert make_prompts(50, seed=3) == make_prompts(50, seed=3)
    assert make_prompts(50, seed=3) != make_prompts(50, seed=4)
    assert make_sft_corpus(50, seed=3) == make_sft_corpus(50, seed=3)
    assert make_sft_corpus(50, seed=3) != make_sft_corpus(50, seed=4)


def test_a_longer_list_starts_with_the_shorter_one():
    assert make_prompts(80, seed=0)[:20] == make_prompts(20, seed=0)


def test_train_and_eval_prompts_are_disjoint_across_seeds():
    train = {p for seed in range(3) for p in make_prompts(300, seed, split="train")}
    evals = {p for seed in range(3) for p in make_prompts(300, seed, split="eval")}
    assert train.isdisjoint(evals)
    assert all(prompt_split(p) == "eval" for p in evals)
    both = make_prompts(500, seed=0, split=None)
    assert {prompt_split(p) for p in both} == {"train", "eval"}


def test_sft_corpus_uses_train_prompts_only():
    assert all(prompt_split(p) == "train" for p, _ in make_sft_corpus(300, seed=0))


def test_unknown_split_is_an_error():
    with pytest.raises(ValueError, match="split"):
        make_prompts(3, split="test")  # type: ignore[arg-type]


def test_prompts_are_distinct_neutral_and_short():
    prompts = make_prompts(400, seed=0, split="eval")
    assert len(set(prompts)) == 400
    assert all(MIN_PROMPT_WORDS <= len(p.split()) <= MAX_PROMPT_WORDS for p in prompts)
    assert all(sentiment_score(p) == 0.5 for p in prompts)


def test_text_is_lowercase_single_spaced_words_of_the_vocabulary():
    words = set(vocabulary())
    for prompt, completion in make_sft_corpus(500, seed=1):
        for text in (prompt, completion):
            assert text == text.lower().strip() and "  " not in text
            assert set(text.split()) <= words, text
        assert completion.endswith(" .")
        assert MIN_COMPLETION_WORDS <= len(completion.split()) <= MAX_COMPLETION_WORDS


def test_vocabulary_is_small_and_fully_used():
    words = vocabulary()
    assert 200 <= len(words) <= 400
    used = {w for pair in make_sft_corpus(5000, seed=0) for text in pair for w in text.split()}
    assert used == set(words)


def test_completions_have_mixed_sentiment():
    scores = [sentiment_score(c) for _, c in make_sft_corpus(2000, seed=0)]
    assert 0.4 < statistics.mean(scores) < 0.6
    assert sum(s > 0.8 for s in scores) > 0.15 * len(scores)  # clearly positive ones
    assert sum(s < 0.2 for s in scores) > 0.15 * len(scores)  # clearly negative ones


def test_completions_use_negation_and_intensifiers():
    text = " ".join(c for _, c in make_sft_corpus(500, seed=0)).split()
    for word in ("not", "never", "very", "really", "but", "although", ","):
        assert word in text, word

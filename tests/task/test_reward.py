"""The lexicon sentiment reward, against values worked out by hand.

Weights: good 1.5, bad -1.5, great 2.0, recommend 1.5; very x1.5, slightly x0.5; temperature 2.
"""

import math

import pytest

from rlhf.task.reward import sentiment_logit, sentiment_reward, sentiment_score


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize(
    ("text", "logit"),
    [
        ("the film was good", 1.5),
        ("the film was bad", -1.5),
        ("the film was very good", 1.5 * 1.5),
        ("the film was slightly good", 1.5 * 0.5),
        ("the film was not good", -1.5),
        ("it was not a very good film", -(1.5 * 1.5)),  # "not" reaches 3 words on
        ("not the film with the good", 1.5),  # 5 words on: out of reach
        ("it was not . good", 1.5),  # punctuation ends the negation
        ("the acting was good but the plot was bad", 0.0),
        ("i would not recommend it", -1.5),
        ("the film was good and the music was great", 1.5 + 2.0),
        ("very very good", 1.5 * 1.5 * 1.5),
    ],
)
def test_hand_worked_logits(text: str, logit: float):
    assert sentiment_logit(text) == pytest.approx(logit)
    assert sentiment_score(text) == pytest.approx(sigmoid(logit / 2.0))


def test_positive_above_half_above_negative():
    positive = sentiment_score("it was a wonderful film and i loved the music .")
    negative = sentiment_score("it was a terrible film and i hated the music .")
    assert positive > 0.9 and negative < 0.1
    assert sentiment_score("the film was very good") == pytest.approx(0.7549, abs=1e-4)


def test_negation_flips_and_intensifier_strengthens():
    good, bad = sentiment_score("was good"), sentiment_score("was bad")
    assert sentiment_score("was not good") == pytest.approx(bad)
    assert sentiment_score("was never bad") == pytest.approx(good)
    assert sentiment_score("was really good") > good
    assert sentiment_score("was really bad") < bad


def test_text_without_sentiment_and_unknown_words_score_half():
    assert sentiment_score("") == 0.5
    assert sentiment_score("the zorblax quivered over the 42 ✓ trees") == 0.5
    assert sentiment_score("zorblax it was good zorblax") == sentiment_score("it was good")


def test_case_and_attached_punctuation_do_not_matter():
    assert sentiment_score("The film was GOOD. Not bad!") == sentiment_score(
        "the film was good . not bad !"
    )


def test_adding_a_positive_clause_raises_the_score():
    text = "the plot was dull"
    scores = [sentiment_score(text)]
    for _ in range(4):
        text += " and the music was good"
        scores.append(sentiment_score(text))
    assert scores == sorted(scores) and len(set(scores)) == len(scores)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_reward_function_scores_responses_only():
    scores = sentiment_reward(["the film was terrible", "the film was great"], ["good", "good"])
    assert scores == [sentiment_score("good")] * 2
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        sentiment_reward(["a", "b"], ["c"])

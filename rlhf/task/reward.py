"""The embedded task's ground-truth reward: a lexicon sentiment classifier.

Plays the part of the DPO paper's sentiment classifier (the probability that a review is
positive). The score of a text is ``sigmoid(sum of word scores / TEMPERATURE)``, where

- a sentiment word scores its weight from ``lexicon.SENTIMENT_WEIGHTS``;
- an intensifier or diminisher ("very", "slightly") multiplies the next sentiment word if it
  comes within ``MODIFIER_WINDOW`` words (several multiply together);
- a negator ("not", "never") flips the sign of the next sentiment word within
  ``NEGATION_WINDOW`` words;
- punctuation and contrast words ("but", "although") end a pending negation or modifier;
- every other word, including words the lexicon does not know, scores nothing.

So "the film was very good" scores sigmoid(1.5 * 1.5 / 2) = 0.755 and "the film was not good"
sigmoid(-1.5 / 2) = 0.321. A text without sentiment words scores exactly 0.5.
"""

from __future__ import annotations

import math
import re

from rlhf.task.lexicon import MODIFIERS, NEGATORS, SCOPE_BREAKERS, SENTIMENT_WEIGHTS

TEMPERATURE = 2.0
NEGATION_WINDOW = 3  # "not" reaches "good" in "not a very good", 3 words on
MODIFIER_WINDOW = 2  # "very" reaches "good" in "very very good", 2 words on

_WORD = re.compile(r"[a-z]+|[.,!?;:]")


def words_of(text: str) -> list[str]:
    """The lowercase words and punctuation marks of ``text``; anything else is dropped."""
    return _WORD.findall(text.lower())


def sentiment_logit(text: str) -> float:
    """The summed word scores of ``text`` (before the temperature and sigmoid)."""
    total = 0.0
    negated_at: int | None = None  # position of the pending negator
    modifiers: list[tuple[int, float]] = []  # (position, multiplier) of pending modifiers
    for position, word in enumerate(words_of(text)):
        if word in SCOPE_BREAKERS:
            negated_at, modifiers = None, []
        elif word in NEGATORS:
            negated_at = position
        elif word in MODIFIERS:
            modifiers.append((position, MODIFIERS[word]))
        elif word in SENTIMENT_WEIGHTS:
            weight = SENTIMENT_WEIGHTS[word]
            for at, multiplier in modifiers:
                if position - at <= MODIFIER_WINDOW:
                    weight *= multiplier
            if negated_at is not None and position - negated_at <= NEGATION_WINDOW:
                weight = -weight
            total += weight
            negated_at, modifiers = None, []
    return total


def sentiment_score(text: str) -> float:
    """The probability that ``text`` is a positive review, in [0, 1]; 0.5 without sentiment."""
    return 1.0 / (1.0 + math.exp(-sentiment_logit(text) / TEMPERATURE))


def sentiment_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """The reward-function interface ``f(prompts, responses) -> scores``: scores responses only.

    Prompts are accepted for the interface's sake (other rewards may read them) and ignored.
    """
    if len(prompts) != len(responses):
        raise ValueError(
            f"sentiment_reward: {len(prompts)} prompts but {len(responses)} responses; "
            "pass one prompt per response"
        )
    return [sentiment_score(response) for response in responses]

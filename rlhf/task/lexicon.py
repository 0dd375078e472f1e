"""The sentiment lexicon shared by the grammar (which words to write) and the reward (how to score).

Each sentiment word has a weight: about 2.5 strong, 1.5 clear, 0.7 mild; negative words weigh
below zero. Modifiers multiply the next sentiment word; negators flip it (see ``reward.py``).
Words are grouped by part of speech because the grammar needs to know where a word fits.
"""

from __future__ import annotations

POSITIVE_ADJECTIVES: dict[str, float] = {
    "brilliant": 2.5, "wonderful": 2.5, "excellent": 2.5, "superb": 2.5, "beautiful": 2.0,
    "stunning": 2.5, "fantastic": 2.5, "amazing": 2.5, "perfect": 2.5, "outstanding": 2.5,
    "delightful": 2.0, "good": 1.5, "great": 2.0, "fun": 1.5, "funny": 1.5, "charming": 1.5,
    "moving": 1.5, "clever": 1.5, "gripping": 1.5, "engaging": 1.5, "fresh": 1.2, "lovely": 1.5,
    "powerful": 1.5, "impressive": 1.5, "enjoyable": 1.5, "touching": 1.5, "smart": 1.2,
    "memorable": 1.5, "witty": 1.5, "warm": 1.2, "exciting": 1.5, "solid": 1.2, "sharp": 1.2,
    "entertaining": 1.5, "nice": 0.7, "decent": 0.7, "fine": 0.5, "pleasant": 0.7, "sweet": 0.7,
    "likable": 0.7, "watchable": 0.5, "competent": 0.5, "honest": 0.7,
}  # fmt: skip
NEGATIVE_ADJECTIVES: dict[str, float] = {
    "terrible": -2.5, "awful": -2.5, "horrible": -2.5, "dreadful": -2.5, "painful": -2.0,
    "unwatchable": -2.5, "pathetic": -2.5, "laughable": -2.0, "embarrassing": -2.0,
    "bad": -1.5, "boring": -1.5, "dull": -1.5, "weak": -1.5, "silly": -1.2, "stupid": -1.5,
    "flat": -1.2, "messy": -1.2, "tedious": -1.5, "lifeless": -1.5, "clumsy": -1.2,
    "forgettable": -1.2, "predictable": -1.2, "annoying": -1.5, "confusing": -1.2, "lazy": -1.5,
    "cheap": -1.2, "shallow": -1.2, "bland": -1.2, "poor": -1.5, "empty": -1.2, "wooden": -1.2,
    "slow": -0.7, "mediocre": -0.7, "uneven": -0.7, "forced": -0.7, "thin": -0.5,
    "average": -0.5, "stiff": -0.7,
}  # fmt: skip
# "it was a ___"
POSITIVE_NOUNS: dict[str, float] = {
    "masterpiece": 3.0, "gem": 2.0, "triumph": 2.5, "joy": 2.0, "treat": 1.5, "delight": 2.0,
}  # fmt: skip
NEGATIVE_NOUNS: dict[str, float] = {
    "mess": -2.0, "disaster": -2.5, "failure": -2.0, "bore": -2.0, "disappointment": -2.0,
    "letdown": -1.5,
}  # fmt: skip
# "i ___ the music"
POSITIVE_VERBS: dict[str, float] = {
    "loved": 2.0, "enjoyed": 1.5, "liked": 1.0, "admired": 1.5, "adored": 2.5,
    "appreciated": 1.0,
}  # fmt: skip
NEGATIVE_VERBS: dict[str, float] = {
    "hated": -2.0, "disliked": -1.5, "regretted": -1.5, "despised": -2.5, "resented": -1.5,
}  # fmt: skip
# "it ___ me"
POSITIVE_REACTIONS: dict[str, float] = {
    "moved": 1.5, "impressed": 1.5, "delighted": 2.0, "charmed": 1.5, "amazed": 2.0,
    "touched": 1.5, "thrilled": 2.0, "entertained": 1.2,
}  # fmt: skip
NEGATIVE_REACTIONS: dict[str, float] = {
    "bored": -1.5, "annoyed": -1.5, "disappointed": -2.0, "irritated": -1.5,
    "frustrated": -1.5, "confused": -1.0, "lost": -0.7,
}  # fmt: skip
# "i ___" (whole phrases: each holds exactly one sentiment word)
POSITIVE_ACTIONS = ["laughed a lot", "smiled all the way through", "cheered at the end"]
NEGATIVE_ACTIONS = ["fell asleep", "yawned the whole time", "wanted to leave", "nearly walked out"]
ACTION_WORDS: dict[str, float] = {
    "laughed": 1.2, "smiled": 1.2, "cheered": 1.5, "asleep": -1.5, "yawned": -1.2, "leave": -1.2,
    "walked": -1.5,
}  # fmt: skip
# "recommend" is positive, so "would not recommend it" is negative
RECOMMEND: dict[str, float] = {"recommend": 1.5}
# sentence openers: "sadly , the ending was slow"
POSITIVE_OPENERS: dict[str, float] = {"luckily": 1.0, "thankfully": 1.0, "happily": 1.0}
NEGATIVE_OPENERS: dict[str, float] = {"sadly": -1.0, "unfortunately": -1.0, "alas": -1.0}

INTENSIFIERS: dict[str, float] = {
    "very": 1.5, "really": 1.5, "truly": 1.5, "so": 1.5, "extremely": 2.0, "incredibly": 2.0,
    "absolutely": 2.0, "quite": 1.2, "completely": 1.5,
}  # fmt: skip
DIMINISHERS: dict[str, float] = {"somewhat": 0.5, "slightly": 0.5, "fairly": 0.7, "rather": 0.7}
NEGATORS: frozenset[str] = frozenset({"not", "never", "hardly", "no"})
# words that end the reach of a pending negation or modifier
SCOPE_BREAKERS: frozenset[str] = frozenset(
    {".", ",", "!", "?", ";", ":", "but", "although", "though", "while", "and"}
)


def _merge(*groups: dict[str, float]) -> dict[str, float]:
    """One dict of all groups; a word in two groups is a mistake in this file."""
    merged: dict[str, float] = {}
    for group in groups:
        for word, weight in group.items():
            if word in merged:
                raise ValueError(f"lexicon.py: {word!r} appears in two word groups")
            merged[word] = weight
    return merged


SENTIMENT_WEIGHTS: dict[str, float] = _merge(
    POSITIVE_ADJECTIVES, NEGATIVE_ADJECTIVES, POSITIVE_NOUNS, NEGATIVE_NOUNS, POSITIVE_VERBS,
    NEGATIVE_VERBS, POSITIVE_REACTIONS, NEGATIVE_REACTIONS, ACTION_WORDS, RECOMMEND,
    POSITIVE_OPENERS, NEGATIVE_OPENERS,
)  # fmt: skip
MODIFIERS: dict[str, float] = _merge(INTENSIFIERS, DIMINISHERS)

"""A small probabilistic grammar of movie reviews: the embedded task's prompts and SFT corpus.

A miniature of the DPO paper's controlled-sentiment experiment, whose prompts are prefixes of
IMDb reviews. Here a prompt is a neutral prefix that stops right before a predicate::

    i watched the new horror film about a young sailor and it

and a completion continues the review with clauses of mixed sentiment::

    was really clever , but the ending felt slow . overall , i would not recommend it .

Text is lowercase words separated by single spaces, with "." and "," as words of their own.
Everything is drawn from ``random.Random(seed)``: the same seed gives the same text.
Sentiment words come from ``rlhf.task.reward``'s lexicon, so the grammar and the reward agree on
what is positive; prompts use no lexicon word at all (they are neutral by construction).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Literal

from rlhf.task import lexicon

Split = Literal["train", "eval"]
Polarity = Literal["positive", "negative", "neutral"]

EVAL_FRACTION = 0.2  # share of all possible prompts that belong to the "eval" split
MIN_PROMPT_WORDS, MAX_PROMPT_WORDS = 5, 12
MIN_COMPLETION_WORDS, MAX_COMPLETION_WORDS = 8, 24

# ---- prompts: opener, film, optional subject, a bridge that ends with the subject of a clause
OPENERS = [
    "i watched", "i saw", "we watched", "we saw", "i finally watched", "i rented",
    "last night i watched", "yesterday i saw", "my friend and i saw", "i went to see",
    "my family watched", "over the weekend i watched", "my sister and i watched",
    "at the festival i saw", "on sunday we watched", "i caught",
]  # fmt: skip
FILM_ORIGINS = [
    "new", "old", "recent", "french", "italian", "japanese", "british", "german", "korean",
    "independent", "american", "black and white", "low budget", "three hour", "silent",
]  # fmt: skip
FILM_KINDS = [
    "horror film", "horror movie", "comedy", "western", "war film", "crime drama", "drama",
    "science fiction film", "romance", "spy thriller", "thriller", "musical", "family film",
    "sports movie", "animated film", "fantasy film", "mystery", "action movie", "documentary",
    "sequel", "remake", "film", "movie", "picture", "cartoon",
]  # fmt: skip
SUBJECTS = [
    "about a young sailor", "about two sisters", "about an old farmer", "about a small town",
    "about a retired detective", "about a boxer", "about a group of students",
    "about a stolen painting", "about a missing dog", "about a train robbery",
    "about a space station", "about a chess player", "about a painter", "about three brothers",
    "about a soldier", "about a teacher", "about a young doctor", "about a king",
    "about a mother and her son", "about a long journey", "about a small island",
    "set in paris", "set in a village", "set in the future", "set in the desert",
    "set in new york", "set in the mountains", "set in london", "set in a prison",
    "starring an unknown cast", "starring a famous singer", "from the seventies",
]  # fmt: skip
# the end of a prompt: the subject of the clause a completion finishes
BRIDGES = [
    "and it", "and the story", "and the acting", "and the plot", "and the music",
    "and the ending", "and honestly it", "and i think it", ", and the film", "and the script",
    ". the lead actor", ". i have to say it", "and i", ". honestly , i", ", and we", ". i",
]  # fmt: skip

# ---- completions: subjects, sentiment-free fillers and the clause connectors
THING_SUBJECTS = [
    "it", "the film", "the movie", "the story", "the plot", "the script", "the dialogue",
    "the acting", "the music", "the soundtrack", "the ending", "the opening", "the camera work",
    "the pacing", "the lead actor", "the villain", "the hero", "the director", "the editing",
    "the first half", "the second half", "the last scene", "the cast", "the humor",
]  # fmt: skip
OBJECTS = [
    "the music", "the story", "the acting", "the ending", "the cast", "the dialogue",
    "the villain", "the jokes", "the costumes", "the songs", "the fights", "the photography",
    "every scene", "the characters", "the opening",
]  # fmt: skip
COPULAS = ["was", "was", "was", "felt", "seemed", "looked"]
NEUTRAL_ADJECTIVES = [
    "long", "short", "quiet", "loud", "dark", "simple", "strange", "familiar", "serious",
    "sad", "bright", "colorful", "different", "unusual", "modern", "violent", "gentle",
]  # fmt: skip
NEUTRAL_THING_PREDICATES = [
    "lasted two hours", "reminded me of my childhood", "took place in winter",
    "was shot in black and white", "had a lot of dialogue", "used real locations",
    "was based on a true story", "was in english", "had three parts", "followed the book",
    "started with a wedding", "ended in the rain",
]  # fmt: skip
NEUTRAL_PERSON_PREDICATES = [
    "watched it with my father", "saw it at home", "went with my brother",
    "remember the last scene", "ate popcorn the whole time", "watched it twice",
    "read the book first", "saw it on a plane", "noticed the music",
]  # fmt: skip
NEUTRAL_OPENERS = ["overall", "honestly", "in the end", "to be fair", "also", "then"]
NEUTRAL_MODIFIERS = ["very", "quite", "rather"]
CONNECTORS = ["and", "but", ", but", ", although", ".", ".", ", and", ", while"]
FILM_WORDS = ["film", "movie", "story", "ride", "experience"]
AUDIENCES = ["to anyone", "to my friends", "to everyone", "to families"]
ADVERBS = ["really", "truly"]  # before a verb: "really loved", "truly moved me"


def _words(weights: dict[str, float]) -> list[str]:
    """The words of a lexicon group, in the file's order (so choices are reproducible)."""
    return list(weights)


POSITIVE = {
    "adjectives": _words(lexicon.POSITIVE_ADJECTIVES),
    "nouns": _words(lexicon.POSITIVE_NOUNS),
    "verbs": _words(lexicon.POSITIVE_VERBS),
    "reactions": _words(lexicon.POSITIVE_REACTIONS),
    "actions": lexicon.POSITIVE_ACTIONS,
    "openers": _words(lexicon.POSITIVE_OPENERS),
}
NEGATIVE = {
    "adjectives": _words(lexicon.NEGATIVE_ADJECTIVES),
    "nouns": _words(lexicon.NEGATIVE_NOUNS),
    "verbs": _words(lexicon.NEGATIVE_VERBS),
    "reactions": _words(lexicon.NEGATIVE_REACTIONS),
    "actions": lexicon.NEGATIVE_ACTIONS,
    "openers": _words(lexicon.NEGATIVE_OPENERS),
}
INTENSIFIERS = _words(lexicon.INTENSIFIERS)
DIMINISHERS = _words(lexicon.DIMINISHERS)
NEGATORS = ["not", "never", "hardly"]


def _a(word: str) -> str:
    """The indefinite article for ``word``."""
    return "an" if word[0] in "aeiou" else "a"


def _maybe(rng: random.Random, p: float, words: Sequence[str]) -> str:
    """A random entry of ``words`` with probability ``p``, else the empty string."""
    return rng.choice(words) if rng.random() < p else ""


def _join(*parts: str) -> str:
    """Joins non-empty parts with single spaces."""
    return " ".join(p for p in parts if p)


def _sample_prompt(rng: random.Random) -> str:
    """One neutral review prefix, of any length (see ``make_prompts`` for the bounds)."""
    origin = _maybe(rng, 0.4, FILM_ORIGINS)
    kind = rng.choice(FILM_KINDS)
    film = _join(origin, kind)
    det = rng.choice(["the", "this", _a(film)])
    bridge = rng.choice(BRIDGES)
    return _join(rng.choice(OPENERS), det, film, _maybe(rng, 0.5, SUBJECTS), bridge)


def _in_eval_split(prompt: str) -> bool:
    """Whether ``prompt`` belongs to the eval split: a fixed function of its text."""
    digest = hashlib.sha256(prompt.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < EVAL_FRACTION


def prompt_split(prompt: str) -> Split:
    """The split (``"train"`` or ``"eval"``) a prompt belongs to, decided by a hash of its text."""
    return "eval" if _in_eval_split(prompt) else "train"


def make_prompts(n: int, seed: int = 0, split: Split | None = "train") -> list[str]:
    """``n`` distinct, sentiment-neutral movie-review prefixes of 5-12 words.

    ``split`` keeps only prompts of that split (``prompt_split``); the train and eval sets are
    disjoint for every pair of seeds. ``None`` keeps prompts of both splits.
    """
    if split not in ("train", "eval", None):
        raise ValueError(f"make_prompts: split must be 'train', 'eval' or None, not {split!r}")
    rng = random.Random(f"prompts-{seed}")
    prompts: list[str] = []
    seen: set[str] = set()
    for _ in range(1000 * n + 1000):
        if len(prompts) == n:
            return prompts
        prompt = _sample_prompt(rng)
        words = len(prompt.split())
        if not MIN_PROMPT_WORDS <= words <= MAX_PROMPT_WORDS or prompt in seen:
            continue
        if split is not None and prompt_split(prompt) != split:
            continue
        seen.add(prompt)
        prompts.append(prompt)
    raise ValueError(f"make_prompts: the grammar did not yield {n} distinct {split} prompts")


def _lexicon(polarity: Polarity, opposite: bool = False) -> dict[str, list[str]]:
    """The word groups of ``polarity`` (or of the other sign when ``opposite``)."""
    return NEGATIVE if (polarity == "positive") == opposite else POSITIVE


def _adjective_phrase(rng: random.Random, polarity: Polarity) -> str:
    """An adjective with an optional intensifier, diminisher or negation, meaning ``polarity``.

    A negated phrase uses an adjective of the opposite sign: "not very good" is negative.
    """
    if polarity == "neutral":
        return _join(_maybe(rng, 0.2, NEUTRAL_MODIFIERS), rng.choice(NEUTRAL_ADJECTIVES))
    if rng.random() < 0.15:
        adjective = rng.choice(_lexicon(polarity, opposite=True)["adjectives"])
        return _join(rng.choice(NEGATORS), _maybe(rng, 0.3, INTENSIFIERS), adjective)
    degree = rng.random()
    modifier = ""
    if degree < 0.35:
        modifier = rng.choice(INTENSIFIERS)
    elif degree < 0.45:
        modifier = rng.choice(DIMINISHERS)
    return _join(modifier, rng.choice(_lexicon(polarity)["adjectives"]))


def _thing_predicate(rng: random.Random, subject: str, polarity: Polarity) -> str:
    """What a film or a part of it was like: "was really clever", "was a mess", "bored me"."""
    if polarity == "neutral":
        if rng.random() < 0.5:
            return rng.choice(NEUTRAL_THING_PREDICATES)
        return _join(rng.choice(COPULAS), _adjective_phrase(rng, "neutral"))
    words = _lexicon(polarity)
    form = rng.random()
    if form < 0.55:
        phrase = _adjective_phrase(rng, polarity)
        copula = "was" if phrase.split()[0] in NEGATORS else rng.choice(COPULAS)
        return _join(copula, phrase)
    if form < 0.7 and subject.split()[-1] in ("it", "film", "movie"):
        noun = rng.choice(words["nouns"])
        return _join("was", _a(noun), noun)
    if form < 0.85:
        adjective = _join(_maybe(rng, 0.3, INTENSIFIERS), rng.choice(words["adjectives"]))
        return _join("was", _a(adjective), adjective, rng.choice(FILM_WORDS))
    return _join(_maybe(rng, 0.3, ADVERBS), rng.choice(words["reactions"]), "me")


def _person_predicate(rng: random.Random, polarity: Polarity) -> str:
    """What the viewer did or thought: "loved the music", "would not recommend it"."""
    if polarity == "neutral":
        return rng.choice(NEUTRAL_PERSON_PREDICATES)
    words = _lexicon(polarity)
    form = rng.random()
    if form < 0.45:
        verb = _join(_maybe(rng, 0.3, ADVERBS), rng.choice(words["verbs"]))
        return _join(verb, rng.choice(OBJECTS))
    if form < 0.7:
        return _join("found it", _adjective_phrase(rng, polarity))
    if form < 0.85:
        negation = "" if polarity == "positive" else rng.choice(["not", "never"])
        return _join("would", negation, "recommend it", _maybe(rng, 0.5, AUDIENCES))
    return rng.choice(words["actions"])


def _predicate(rng: random.Random, subject: str, polarity: Polarity) -> str:
    """The rest of a clause whose subject is ``subject`` ("i"/"we" or a thing)."""
    if subject in ("i", "we"):
        return _person_predicate(rng, polarity)
    return _thing_predicate(rng, subject, polarity)


def _sentence_opener(rng: random.Random, polarity: Polarity) -> str:
    """An optional discourse word for a new sentence, matching its sentiment: "sadly ,"."""
    if rng.random() > 0.3:
        return ""
    openers = NEUTRAL_OPENERS if polarity == "neutral" else _lexicon(polarity)["openers"]
    return f"{rng.choice(openers)} ,"


def _sample_completion(rng: random.Random, first_subject: str) -> str:
    """Clauses of mixed sentiment continuing a prompt that ends with ``first_subject``.

    A review has a tone (the chance that a sentiment clause is positive) drawn uniformly, so
    some reviews are clearly positive, some clearly negative and most are mixed.
    """
    tone = rng.random()
    target = rng.randint(MIN_COMPLETION_WORDS - 1, MAX_COMPLETION_WORDS - 6)

    def polarity() -> Polarity:
        if rng.random() < 0.2:
            return "neutral"
        return "positive" if rng.random() < tone else "negative"

    parts = [_predicate(rng, first_subject, polarity())]
    while len(_join(*parts).split()) < target:
        connector = rng.choice(CONNECTORS)
        clause_polarity = polarity()
        subject = "i" if rng.random() < 0.3 else rng.choice(THING_SUBJECTS)
        opener = _sentence_opener(rng, clause_polarity) if connector == "." else ""
        parts.append(_join(connector, opener, subject, _predicate(rng, subject, clause_polarity)))
    return _join(*parts, ".")


def make_sft_corpus(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (prompt, completion) pairs of mixed-sentiment reviews for supervised fine-tuning.

    Prompts come from the train split only; completions have 8-24 words and end with "."
    (the EOS token is the training code's to append).
    """
    rng = random.Random(f"sft-{seed}")
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n:
        prompt = _sample_prompt(rng)
        if not MIN_PROMPT_WORDS <= len(prompt.split()) <= MAX_PROMPT_WORDS:
            continue
        if prompt_split(prompt) != "train":
            continue
        completion = _sample_completion(rng, prompt.split()[-1])
        if MIN_COMPLETION_WORDS <= len(completion.split()) <= MAX_COMPLETION_WORDS:
            pairs.append((prompt, completion))
    return pairs


def vocabulary() -> list[str]:
    """Every word the grammar can write, sorted: the word-level tokenizer's vocabulary."""
    phrase_lists = [
        OPENERS, FILM_ORIGINS, FILM_KINDS, SUBJECTS, BRIDGES, THING_SUBJECTS, OBJECTS, COPULAS,
        NEUTRAL_ADJECTIVES, NEUTRAL_THING_PREDICATES, NEUTRAL_PERSON_PREDICATES, NEUTRAL_OPENERS,
        NEUTRAL_MODIFIERS, CONNECTORS, FILM_WORDS, AUDIENCES, ADVERBS, INTENSIFIERS, DIMINISHERS,
        NEGATORS, *POSITIVE.values(), *NEGATIVE.values(),
        ["a an the this i we it me was found would not recommend ,"],
    ]  # fmt: skip
    return sorted(
        {word for phrases in phrase_lists for phrase in phrases for word in phrase.split()}
    )

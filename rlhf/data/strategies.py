"""Turning K scored responses to one prompt into preferences, without inventing any.

A strategy maps the scores of one prompt's K responses to a list of rankings: each ranking is a
list of response indices, best first (a pair is a ranking of 2). Responses whose scores tie
(within ``tie_tolerance``) are never ordered against each other: a tie is dropped and counted.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from rlhf.algorithms.registry import Registry

pair_strategies = Registry(
    "pair_strategy", ("scores", "tie_tolerance"), returns="Preferences (rankings best first)"
)
register_pair_strategy = pair_strategies.register
get_pair_strategy = pair_strategies.get


@dataclass(frozen=True)
class Preferences:
    """What a strategy made of one prompt's scores."""

    rankings: list[list[int]]  # each best first
    ties_dropped: int  # responses (ranking) or pairs (pairwise) left out because they tied


def _tied(a: float, b: float, tolerance: float) -> bool:
    return abs(a - b) <= tolerance


@register_pair_strategy("best_vs_worst")
def best_vs_worst(scores: Sequence[float], tie_tolerance: float = 0.0) -> Preferences:
    """One pair: the highest-scored response over the lowest (none if they tie)."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    worst = min(range(len(scores)), key=lambda i: (scores[i], i))
    if _tied(scores[best], scores[worst], tie_tolerance):
        return Preferences([], 1)
    return Preferences([[best, worst]], 0)


@register_pair_strategy("all_pairs")
def all_pairs(scores: Sequence[float], tie_tolerance: float = 0.0) -> Preferences:
    """Every pair of responses with different scores, the better one first (the DPO paper's)."""
    rankings, ties = [], 0
    for i, j in itertools.combinations(range(len(scores)), 2):
        if _tied(scores[i], scores[j], tie_tolerance):
            ties += 1
        else:
            rankings.append([i, j] if scores[i] > scores[j] else [j, i])
    return Preferences(rankings, ties)


@register_pair_strategy("ranking", ranking=True)
def full_ranking(scores: Sequence[float], tie_tolerance: float = 0.0) -> Preferences:
    """The responses sorted best first (for Plackett-Luce); of each tied group only the first
    sampled is kept, so the ranking never orders two tied responses."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        if not any(_tied(scores[i], scores[k], tie_tolerance) for k in kept):
            kept.append(i)
    dropped = len(scores) - len(kept)
    return Preferences([kept] if len(kept) >= 2 else [], dropped)


def uniform_preferences(
    strategy: str, scores: Sequence[float], tie_tolerance: float
) -> Preferences:
    """The strategy's preferences, all of one width so a batch has one K.

    Pairs are 2 wide; a ranking strategy's are K = len(scores) wide. A ranking a tie shortened
    is left out and counted with the ties: counted, never padded or invented.
    """
    build = get_pair_strategy(strategy)
    prefs = build(scores, tie_tolerance)
    width = len(scores) if build.metadata.get("ranking", False) else 2
    kept = [r for r in prefs.rankings if len(r) == width]
    return Preferences(kept, prefs.ties_dropped + len(prefs.rankings) - len(kept))

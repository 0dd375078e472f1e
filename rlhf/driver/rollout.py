"""Sampling K responses per prompt and scoring them: the first half of every online round."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import ray

from rlhf.models.vllm_engine import Completion
from rlhf.schema import SamplingConfig

RewardFunction = Callable[[list[str], list[str]], list[float]]


@dataclass(frozen=True)
class ScoredGroup:
    """One prompt's K completions and their rewards."""

    prompt: str
    completions: list[Completion]
    scores: list[float]


def sample(
    samplers: list, prompts: list[str], sampling: SamplingConfig, seed: int
) -> list[list[Completion]]:
    """K completions per prompt, the prompts split evenly over the sampler actors."""
    n = len(samplers)
    chunks = [prompts[i::n] for i in range(n)]
    refs = [
        s.generate.remote(
            chunk,
            sampling.n,
            sampling.temperature,
            sampling.top_p,
            sampling.max_tokens,
            seed * 1009 + i,
        )
        for i, (s, chunk) in enumerate(zip(samplers, chunks, strict=True))
    ]
    results = ray.get(refs)
    groups: list[list[Completion]] = [[] for _ in prompts]
    for i, result in enumerate(results):
        for j, group in enumerate(result):
            groups[i + j * n] = group
    return groups


def score(groups: list[list[Completion]], reward: RewardFunction) -> list[ScoredGroup]:
    """Rewards for every completion; a reward function that misbehaves is named clearly."""
    prompts = [c.prompt for group in groups for c in group]
    responses = [c.text for group in groups for c in group]
    try:
        scores = list(reward(prompts, responses))
    except Exception as error:
        raise RuntimeError(f"the reward function raised {type(error).__name__}: {error}") from error
    if len(scores) != len(responses):
        raise ValueError(
            f"the reward function returned {len(scores)} scores for {len(responses)} responses"
        )
    bad = [
        i for i, s in enumerate(scores) if not isinstance(s, (int, float)) or not math.isfinite(s)
    ]
    if bad:
        i = bad[0]
        raise ValueError(
            f"the reward function returned {len(bad)} non-finite or non-numeric scores, "
            f"first {scores[i]!r} for response {responses[i]!r}"
        )
    result, start = [], 0
    for group in groups:
        result.append(
            ScoredGroup(
                group[0].prompt, group, [float(s) for s in scores[start : start + len(group)]]
            )
        )
        start += len(group)
    return result

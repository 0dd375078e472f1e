"""Sampling K responses per prompt and scoring them: the first half of every online round."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ray

from rlhf.driver.retry import ACTOR_FAILURES, bounded_get
from rlhf.models.vllm_engine import Completion
from rlhf.schema import SamplingConfig

GroupScorer = Callable[[list[str], list[list[str]]], list[list[float]]]


@dataclass(frozen=True)
class ScoredGroup:
    """One prompt's K completions and their rewards."""

    prompt: str  # the text the sampler was given (chat messages rendered by the template)
    completions: list[Completion]
    scores: list[float]
    given: Any = None  # the prompt as the user gave it (text or chat messages); None: ``prompt``

    @property
    def prompt_as_given(self) -> Any:
        """The prompt as the reward received it: the user's text or chat messages."""
        return self.prompt if self.given is None else self.given


@dataclass
class PendingSamples:
    """Completions being generated: the samplers' ObjectRefs, and the weights that sample them.

    :func:`start_sampling` returns at once; :meth:`get` waits for the completions. An online
    round with ``rounds.max_staleness`` > 0 starts the next rounds' sampling before it trains.
    """

    refs: list  # one per sampler: its chunk's completions, grouped by prompt
    num_prompts: int
    version: int | None  # the weights version the samplers hold (None: not checked)
    groups: list[list[Completion]] | None = None  # the completions, once collected

    def get(self, timeout_s: float | None = None) -> list[list[Completion]]:
        """K completions per prompt, in prompt order: waits for the samplers, ``timeout_s`` at
        most (None: no bound), and names one that died at once (``retry.bounded_get``)."""
        if self.groups is None:
            n = len(self.refs)
            groups: list[list[Completion]] = [[] for _ in range(self.num_prompts)]
            names = [f"sampler {i}" for i in range(n)]
            for i, result in enumerate(bounded_get(self.refs, names, timeout_s, "generate")):
                for j, group in enumerate(result):
                    groups[i + j * n] = group
            self.groups = groups
        return self.groups

    @classmethod
    def done(cls, groups: list[list[Completion]], version: int | None) -> PendingSamples:
        """Completions already collected (e.g. read back from a checkpoint)."""
        return cls([], len(groups), version, groups)


def start_sampling(
    samplers: list,
    prompts: list[str],
    sampling: SamplingConfig,
    seed: int,
    weights_version: int | None = None,
) -> PendingSamples:
    """Starts K completions per prompt, the prompts split evenly over the sampler actors.

    ``weights_version``: the version of the last weight sync; a sampler that holds another
    (Ray restarted it) raises StaleWeightsError instead of sampling the wrong policy.
    """
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
            weights_version=weights_version,
            min_tokens=sampling.min_tokens,
        )
        for i, (s, chunk) in enumerate(zip(samplers, chunks, strict=True))
    ]
    return PendingSamples(refs, len(prompts), weights_version)


def sample(
    samplers: list,
    prompts: list[str],
    sampling: SamplingConfig,
    seed: int,
    weights_version: int | None = None,
) -> list[list[Completion]]:
    """:func:`start_sampling`, waited for: K completions per prompt, in prompt order."""
    return start_sampling(samplers, prompts, sampling, seed, weights_version).get()


def score(
    groups: list[list[Completion]],
    score_groups: GroupScorer,
    given: Sequence[Any] | None = None,
) -> list[ScoredGroup]:
    """Rewards for every completion; a reward source that misbehaves is named clearly.

    ``score_groups(prompts, groups_of_texts)`` returns one list of scores per prompt, e.g. a
    reward actor's ``score_groups`` behind ``ray.get``. ``given``: the prompts as the user gave
    them (``Prompt.given``: text or chat messages), one per group; the reward receives these
    instead of the rendered text the sampler was given.
    """
    if given is not None and len(given) != len(groups):
        raise ValueError(f"{len(given)} prompts as given for {len(groups)} groups")
    prompts = list(given) if given is not None else [group[0].prompt for group in groups]
    texts = [[c.text for c in group] for group in groups]
    try:
        scores = score_groups(prompts, texts)
    except ACTOR_FAILURES:
        raise  # the reward actor's process died: the caller may retry once Ray restarted it
    except Exception as error:
        cause = error.cause if isinstance(error, ray.exceptions.RayTaskError) else error
        raise RuntimeError(f"the reward function raised {type(cause).__name__}: {cause}") from error
    flat = [s for group in scores for s in group]
    total = sum(len(t) for t in texts)
    if [len(g) for g in scores] != [len(t) for t in texts]:
        raise ValueError(f"the reward function returned {len(flat)} scores for {total} responses")
    bad = [
        i
        for i, s in enumerate(flat)
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s)
    ]
    if bad:
        responses = [t for group in texts for t in group]
        raise ValueError(
            f"the reward function returned {len(bad)} non-finite or non-numeric scores, "
            f"first {flat[bad[0]]!r} for response {responses[bad[0]]!r}"
        )
    return [
        ScoredGroup(
            group[0].prompt, group, [float(s) for s in group_scores], None if given is None else p
        )
        for group, group_scores, p in zip(groups, scores, prompts, strict=True)
    ]


@dataclass(frozen=True)
class ActorScorer:
    """A :data:`GroupScorer` that calls a reward actor's ``score_groups`` remotely."""

    actor: Any  # the reward actor's handle (a retry waits for it after a restart)
    timeout_s: float | None = None  # how long a call may take (ray.call_timeout_s; None: no bound)

    def __call__(self, prompts: list[str], groups: list[list[str]]) -> list[list[float]]:
        ref = self.actor.score_groups.remote(prompts, groups)
        return bounded_get([ref], ["reward"], self.timeout_s, "score")[0]


def actor_scorer(reward_actor, timeout_s: float | None = None) -> ActorScorer:
    """The reward actor's ``score_groups``, called remotely (``timeout_s`` at most)."""
    return ActorScorer(reward_actor)

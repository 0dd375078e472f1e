"""Reward sources: what turns K responses to a prompt into K scores.

Three kinds, chosen by the config's ``reward`` section:

- ``function``: any ``f(prompts, responses) -> scores``, by registry name or import path
  (``rlhf.task:sentiment_reward`` is the embedded task's);
- ``model``: a Hugging Face sequence-classification reward model (score = its logit ``label``);
- ``judge``: a pairwise judge ``judge(prompt, a, b) -> P(a is better)``, as in LLM-as-judge
  setups; each response's score is its mean win probability against the others of its prompt.

Reward functions and judges are registries like the losses, so plugins add theirs by name.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from rlhf.algorithms.registry import Registry, UnknownNameError
from rlhf.cluster.resources import check_custom_resources
from rlhf.config import ConfigError

reward_functions = Registry(
    "reward_function", ("prompts", "responses"), returns="list[float], one score per response"
)
register_reward_function = reward_functions.register

judges = Registry("judge", ("prompt", "a", "b"), returns="float, the probability that a beats b")
register_judge = judges.register


@register_reward_function("sentiment")
def sentiment(prompts: list[str], responses: list[str]) -> list[float]:
    """The embedded task's ground truth: P(positive) of each response (see rlhf.task.reward)."""
    from rlhf.task import sentiment_reward

    return sentiment_reward(prompts, responses)


@dataclass
class RewardConfig:
    """Where scores come from; ``kind`` picks which of the fields below is used."""

    kind: Literal["function", "model", "judge"] = "function"
    function: str = "sentiment"  # registry name or package.module:function
    model: str | None = None  # a Hugging Face sequence-classification model directory
    label: int = 0  # which logit of the reward model is the score
    trust_remote_code: bool = False  # the reward model's own code; off unless turned on
    judge: str | None = None  # registry name or package.module:function
    batch_size: int = 64  # reward-model forward batch
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)  # custom ones, e.g. {node_b: 0.01}

    def validate(self) -> None:
        check_custom_resources(self.resources)
        if self.kind == "model" and not self.model:
            raise ConfigError("kind 'model' needs model: a sequence-classification model path")
        if self.kind == "judge" and not self.judge:
            raise ConfigError("kind 'judge' needs judge: a judge name or import path")
        registry, name = {
            "function": (reward_functions, self.function),
            "judge": (judges, self.judge),
        }.get(self.kind, (None, None))
        if registry is not None:
            try:
                registry.get(name)
            except (UnknownNameError, ImportError, TypeError, ValueError) as error:
                raise ConfigError(f"{self.kind}: {error}") from None


def judge_scores(
    judge: Callable[[str, str, str], float], prompt: str, responses: list[str]
) -> list[float]:
    """Mean win probability of each response against every other (both orders asked, so a
    judge's position bias cancels)."""
    k = len(responses)
    wins = [0.0] * k
    for i, j in itertools.permutations(range(k), 2):
        p = float(judge(prompt, responses[i], responses[j]))
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"the judge returned {p!r}, not a probability in [0, 1]")
        wins[i] += p
        wins[j] += 1.0 - p
    return [w / (2 * (k - 1)) for w in wins] if k > 1 else [0.5] * k


def flat_scorer(
    reward: Callable[[list[str], list[str]], list[float]],
) -> Callable[[list[str], list[list[str]]], list[list[float]]]:
    """Turns ``f(prompts, responses) -> scores`` into a group scorer (for local use and tests)."""

    def score_groups(prompts: list[str], groups: list[list[str]]) -> list[list[float]]:
        flat = list(
            reward(
                [p for p, g in zip(prompts, groups, strict=True) for _ in g],
                [r for g in groups for r in g],
            )
        )
        total = sum(len(g) for g in groups)
        if len(flat) != total:
            raise ValueError(
                f"the reward function returned {len(flat)} scores for {total} responses"
            )
        out, start = [], 0
        for g in groups:
            out.append(flat[start : start + len(g)])
            start += len(g)
        return out

    return score_groups

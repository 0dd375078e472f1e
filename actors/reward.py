"""Reward actor: owns one reward source (a function, a reward model or a judge) and scores."""

from __future__ import annotations

from rlhf.rewards import (
    RewardConfig,
    RewardModel,
    flat_scorer,
    judge_scores,
    judges,
    reward_functions,
)


class RewardActor:
    """Scores groups of responses; the driver decides what to do with the scores."""

    def __init__(self, cfg: RewardConfig) -> None:
        self.cfg = cfg
        if cfg.kind == "function":
            fn = reward_functions.get(cfg.function)
            self._score_groups = flat_scorer(fn)
        elif cfg.kind == "judge":
            judge = judges.get(cfg.judge)
            self._score_groups = lambda prompts, groups: [
                judge_scores(judge, p, g) for p, g in zip(prompts, groups, strict=True)
            ]
        else:
            model = RewardModel(cfg.model, cfg.label, cfg.trust_remote_code, cfg.batch_size)
            self._score_groups = flat_scorer(model)

    def score_groups(self, prompts: list[str], groups: list[list[str]]) -> list[list[float]]:
        """One score per response, grouped like ``groups`` (K responses of each prompt)."""
        return self._score_groups(prompts, groups)

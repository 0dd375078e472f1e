"""Preference data the way the DPO paper made it: sample K completions per prompt from the SFT
model with vLLM, label them with the reward, write pairs (or rankings) to Parquet."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from rlhf.algorithms.registry import UnknownNameError
from rlhf.config import ConfigError
from rlhf.data.prompts import PromptsConfig, draw_prompts, job_prompts
from rlhf.data.strategies import get_pair_strategy, uniform_preferences
from rlhf.driver.common import (
    ray_session,
    resolve_model_path,
    start_reward,
    start_samplers,
)
from rlhf.driver.rollout import ScoredGroup, actor_scorer, sample, score
from rlhf.rewards import RewardConfig
from rlhf.schema import EngineConfig, ModelConfig, RayConfig, SamplingConfig


@dataclass
class MakeDataConfig:
    """Settings of ``rlhf make-data``."""

    output: str = "data/prefs.parquet"
    num_prompts: int = 512  # at most: a prompt file with fewer gives each of its prompts once
    split: Literal["train", "eval"] = "train"  # eval: the held-out prompts
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    strategy: str = "all_pairs"  # a pair strategy: best_vs_worst | all_pairs | ranking | plugin
    tie_tolerance: float = 0.0
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    seed: int = 0

    def validate(self) -> None:
        try:
            get_pair_strategy(self.strategy)
        except UnknownNameError as error:
            raise ConfigError(f"strategy: {error}") from None
        if self.sampling.n < 2:
            raise ConfigError("sampling.n must be at least 2 to build preferences")
        if self.tie_tolerance < 0:
            raise ConfigError(f"tie_tolerance must be >= 0, got {self.tie_tolerance}")
        if self.num_prompts < 1:
            raise ConfigError(f"num_prompts must be at least 1, got {self.num_prompts}")


def preference_table(groups: list[ScoredGroup], strategy: str, tie_tolerance: float) -> pa.Table:
    """Pairs as ``{prompt, chosen, rejected}``; rankings as ``{prompt, responses, scores}``.

    The prompt is as the user gave it: chat messages stay messages (offline DPO renders them
    with the chat template again), so the file reads like any conversational preference file.
    """
    build = get_pair_strategy(strategy)
    rows = []
    for group in groups:
        texts = [c.text for c in group.completions]
        for ranking in uniform_preferences(strategy, group.scores, tie_tolerance).rankings:
            if build.metadata.get("ranking", False):
                rows.append(
                    {
                        "prompt": group.prompt_as_given,
                        "responses": [texts[i] for i in ranking],
                        "scores": [group.scores[i] for i in ranking],
                    }
                )
            else:
                best, worst = ranking
                rows.append(
                    {
                        "prompt": group.prompt_as_given,
                        "chosen": texts[best],
                        "rejected": texts[worst],
                        "score_chosen": group.scores[best],
                        "score_rejected": group.scores[worst],
                    }
                )
    return pa.Table.from_pylist(rows)


def run(cfg: MakeDataConfig) -> Path:
    """Samples, labels and writes the Parquet file; returns its path."""
    model_path = resolve_model_path(cfg.model)
    source = job_prompts(cfg.prompts, cfg.seed, model_path, cfg.model.trust_remote_code)
    prompts = draw_prompts(source, cfg.num_prompts, cfg.split)
    with ray_session(cfg.ray) as scope:
        samplers = scope.own(
            start_samplers(1, cfg.engine, cfg.model, model_path, cfg.seed, cfg.ray)
        )
        reward = actor_scorer(scope.own(start_reward(cfg.reward, cfg.ray)))
        texts = [p.text for p in prompts]
        groups = score(
            sample(samplers, texts, cfg.sampling, cfg.seed), reward, [p.given for p in prompts]
        )
    table = preference_table(groups, cfg.strategy, cfg.tie_tolerance)
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    print(f"wrote {table.num_rows} rows ({cfg.strategy}) from {len(prompts)} prompts to {out}")
    return out

"""The sampling job: K completions per prompt from the model, scored by the reward.

This is the first step of every online round; on its own it shows what a model does before any
training (the README's demo until online DPO lands).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from rlhf.data.prompts import PromptsConfig, draw_prompts, job_prompts
from rlhf.driver.common import (
    ray_session,
    resolve_model_path,
    start_reward,
    start_samplers,
)
from rlhf.driver.rollout import actor_scorer, sample, score
from rlhf.rewards import RewardConfig
from rlhf.schema import EngineConfig, ModelConfig, RayConfig, SamplingConfig


@dataclass
class SampleJobConfig:
    """Settings of ``rlhf demo`` / the sampling job."""

    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    num_prompts: int = 8  # held-out prompts where there are some, else the first of prompts.path
    seed: int = 0


def run(cfg: SampleJobConfig) -> list[dict]:
    """Samples, scores and prints; returns one record per completion.

    A record's ``prompt`` is as the user gave it (text or chat messages), ``prompt_text`` what
    the model was given.
    """
    model_path = resolve_model_path(cfg.model)
    source = job_prompts(cfg.prompts, cfg.seed, model_path, cfg.model.trust_remote_code)
    prompts = draw_prompts(source, cfg.num_prompts)
    with ray_session(cfg.ray) as scope:
        samplers = scope.own(
            start_samplers(1, cfg.engine, cfg.model, model_path, cfg.seed, cfg.ray)
        )
        reward = actor_scorer(scope.own(start_reward(cfg.reward, cfg.ray)))
        texts = [p.text for p in prompts]
        scored = score(
            sample(samplers, texts, cfg.sampling, cfg.seed), reward, [p.given for p in prompts]
        )
    records = [
        {
            "prompt": g.prompt_as_given,
            "prompt_text": g.prompt,
            "response": c.text,
            "reward": s,
            "finished": c.finished,
        }
        for g in scored
        for c, s in zip(g.completions, g.scores, strict=True)
    ]
    _print_table(records)
    return records


def _print_table(records: list[dict]) -> None:
    last_prompt = None
    for r in records:
        if r["prompt_text"] != last_prompt:
            print(f"\n>>> {r['prompt_text']}")
            last_prompt = r["prompt_text"]
        print(f"   {r['reward']:.3f}  {r['response'].strip()}{'' if r['finished'] else ' [cut]'}")
    rewards = [r["reward"] for r in records]
    print(
        f"\n{len(records)} samples: mean reward {statistics.mean(rewards):.3f}, "
        f"std {statistics.pstdev(rewards):.3f}, min {min(rewards):.3f}, max {max(rewards):.3f}"
    )

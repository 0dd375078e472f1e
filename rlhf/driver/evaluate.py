"""Held-out evaluation of trained policies: mean reward and KL(policy || reference).

Every policy samples the same held-out prompts with the same seeds (one vLLM sampler each, in
turn); one reward actor scores them and one reference server (vLLM) gives the reference
log-probs of the sampled responses. KL is the k1 estimate on the policy's own samples, the
mean of log pi(y|x) - log pi_ref(y|x): unbiased at temperature 1 and top_p 1.
"""

from __future__ import annotations

import math
import statistics

import ray

from rlhf.driver.common import start_reward, start_samplers
from rlhf.driver.reference import response_logps
from rlhf.driver.rollout import actor_scorer, sample, score
from rlhf.rewards import RewardConfig
from rlhf.schema import EngineConfig, ModelConfig, RayConfig, SamplingConfig


def evaluate_policies(
    policies: dict[str, str],
    reference: str,
    prompts: list[str],
    sampling: SamplingConfig,
    scope,
    reward: RewardConfig | None = None,
    engine: EngineConfig | None = None,
    model: ModelConfig | None = None,
    ray_cfg: RayConfig | None = None,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """``{name: {reward, reward_sem, kl, kl_sem, response_length}}`` for each policy directory.

    ``scope`` is the job's ``ActorScope`` (Ray must be up); the actors started here end with it.
    """
    if sampling.temperature != 1.0 or sampling.top_p != 1.0:
        raise ValueError("KL is estimated on the policy's own samples: use temperature 1, top_p 1")
    engine, model = engine or EngineConfig(), model or ModelConfig()
    ray_cfg = ray_cfg or RayConfig()
    from actors.group import spawn
    from actors.reference import ReferenceServer

    server = scope.own(
        spawn(
            ReferenceServer,
            engine.settings(model, reference, seed),
            num_cpus=engine.num_cpus,
            num_gpus=engine.num_gpus,
            env_vars=ray_cfg.env_vars,
        )
    )
    scorer = actor_scorer(scope.own(start_reward(reward or RewardConfig(), ray_cfg)))
    results = {}
    for name, path in policies.items():
        [sampler] = start_samplers(1, engine, model, path, seed, ray_cfg)
        try:
            scored = score(sample([sampler], prompts, sampling, seed), scorer)
        finally:
            ray.kill(sampler)
        completions = [c for g in scored for c in g.completions]
        ref = response_logps(
            server, [c.prompt_ids for c in completions], [c.token_ids for c in completions]
        )
        kl = [c.logprob - r for c, r in zip(completions, ref, strict=True)]
        rewards = [s for g in scored for s in g.scores]
        results[name] = {
            "reward": statistics.mean(rewards),
            "reward_sem": _sem(rewards),
            "kl": statistics.mean(kl),
            "kl_sem": _sem(kl),
            "response_length": statistics.mean(len(c.token_ids) for c in completions),
        }
    return results


def _sem(values: list[float]) -> float:
    """Standard error of the mean."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")

"""PPO (and the critic-free GRPO, RLOO, REINFORCE++) in the same driver as DPO.

    rlhf train configs/ppo.yaml ppo.advantage=grpo

Each iteration: the samplers (vLLM) draw K responses per prompt from the current policy, the
reward actor scores them, the reference server (vLLM) gives per-token reference log-probs, the
policy and critic groups (DeepSpeed) give old log-probs and values; per-token KL-penalised
rewards go through the configured advantage estimator; then several PPO epochs over
mini-batches train the policy (clipped ratio) and the critic (clipped values) side by side, and
the new weights are pushed into the samplers. No critic is started when the estimator needs
none. The iterations run in the online skeleton (``rlhf.driver.online_loop``: start-up, retries
of dead actors, weight sync, checkpoints and ``--resume``); this module is what PPO adds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

from rlhf.algorithms import (
    AdaptiveKLController,
    AdvantageInput,
    FixedKLController,
    UnknownNameError,
    get_advantage,
)
from rlhf.algorithms.kl import KL_KINDS
from rlhf.cluster.resources import Role, trainer_role
from rlhf.config import ConfigError
from rlhf.data.batch import RolloutBatch
from rlhf.data.prompts import PromptsConfig
from rlhf.driver import experience as xp
from rlhf.driver.checks import check_finite_loss
from rlhf.driver.loops import register_loop
from rlhf.driver.online import SamplersConfig, sample_metrics
from rlhf.driver.online_loop import (
    Hook,
    OnlineAlgorithm,
    Round,
    RoundSizes,
    check_online_config,
    run_online,
)
from rlhf.driver.plan import online_plan
from rlhf.driver.preference_training import ReferenceConfig
from rlhf.driver.reference import PendingLogps, start_token_logps
from rlhf.driver.retry import bounded_get, ranks
from rlhf.driver.rollout import ScoredGroup
from rlhf.driver.setup import online_roles
from rlhf.models.deepspeed_config import PPOTrainerConfig
from rlhf.rewards import RewardConfig
from rlhf.run_dir import read_metrics
from rlhf.schema import ModelConfig, RayConfig, check_job


@dataclass
class PPOSettings:
    """What one iteration does, and the PPO objective's knobs."""

    iterations: int = 8
    prompts_per_iteration: int = 64  # K samples each (samplers.sampling.n)
    eval_prompts: int = 64  # held-out prompts sampled each iteration (reward and KL)
    eval_every: int = 1  # iterations 0, n, 2n, ... sample them (and the final weights, always)
    epochs: int = 4  # PPO passes over each iteration's experience
    minibatch_size: int = 64  # sequences per optimizer step, all ranks together
    advantage: str = "gae"  # gae | grpo | rloo | reinforce_pp | a plugin
    advantage_options: dict[str, Any] = field(default_factory=dict)  # e.g. {gamma: 1, lam: 0.95}
    whiten_advantages: bool = True
    clip_eps: float = 0.2
    value_clip_eps: float | None = 0.2
    entropy_coef: float = 0.0
    kl_coef: float = 0.05  # the initial coefficient when kl_target is set
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    kl_target: float | None = None  # set: adaptive KL controller toward this KL per sequence
    kl_horizon: float = 10_000.0
    # Truncated importance weights min(pi_old / mu, is_cap) on the policy loss, mu the samplers'
    # policy that drew the tokens (older weights with rounds.max_staleness); null: none.
    is_cap: float | None = 2.0

    def validate(self) -> None:
        for key in ("iterations", "prompts_per_iteration", "eval_prompts", "eval_every", "epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1")
        if self.minibatch_size < 1:
            raise ConfigError("minibatch_size must be at least 1")
        if self.clip_eps <= 0 or (self.value_clip_eps is not None and self.value_clip_eps <= 0):
            raise ConfigError("clip_eps and value_clip_eps must be positive (value_clip_eps: null)")
        if self.kl_coef < 0:
            raise ConfigError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if self.entropy_coef < 0:
            raise ConfigError(f"entropy_coef must be >= 0, got {self.entropy_coef}")
        if self.kl_target is not None and self.kl_target <= 0:
            raise ConfigError(
                f"kl_target must be > 0 (or null: a fixed kl_coef), got {self.kl_target}"
            )
        if self.kl_horizon <= 0:
            raise ConfigError(f"kl_horizon must be > 0, got {self.kl_horizon}")
        if self.is_cap is not None and self.is_cap <= 0:
            raise ConfigError(
                f"ppo.is_cap must be > 0 (null: no importance correction), got {self.is_cap}"
            )
        if self.kl_estimator not in KL_KINDS:
            raise ConfigError(f"kl_estimator must be one of {', '.join(KL_KINDS)}")
        try:
            get_advantage(self.advantage)
        except (UnknownNameError, ImportError, TypeError) as error:
            raise ConfigError(f"advantage: {error}") from None


@dataclass
class PPORounds:
    """How PPO's iterations overlap (their number is ``ppo.iterations``)."""

    # Iterations sampled ahead on older weights while the trainers train (0: synchronous); an
    # iteration's samples come from weights at most this many versions old.
    max_staleness: int = 0


@dataclass
class PPOConfig:
    """Settings of a PPO run (``algorithm: ppo``)."""

    algorithm: Literal["ppo"] = "ppo"
    output_dir: str = "runs/ppo"
    seed: int = 0
    device: Literal["cpu", "cuda"] = "cpu"
    reward: RewardConfig = field(default_factory=RewardConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)  # embedded, or the user's
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    trainer: PPOTrainerConfig = field(default_factory=PPOTrainerConfig)  # the policy's
    critic: PPOTrainerConfig = field(default_factory=PPOTrainerConfig)
    critic_model: str | None = None  # the critic's body; None: the policy's model
    samplers: SamplersConfig = field(default_factory=SamplersConfig)
    ppo: PPOSettings = field(default_factory=PPOSettings)
    rounds: PPORounds = field(default_factory=PPORounds)
    keep_checkpoints: int = 2
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self) -> None:
        """Runs the estimator once on a dummy batch: a bad K or option fails before any actor."""
        k = self.samplers.sampling.n
        estimator = get_advantage(self.ppo.advantage)
        dummy = AdvantageInput(
            rewards=torch.ones(2 * k, 3),
            mask=torch.ones(2 * k, 3),
            values=torch.zeros(2 * k, 3) if estimator.needs_critic else None,
            group_size=k,
        )
        try:
            estimator(dummy, **self.ppo.advantage_options)
        except (ValueError, TypeError) as error:
            raise ConfigError(
                f"ppo.advantage {self.ppo.advantage!r} with samplers.sampling.n={k} and "
                f"advantage_options {self.ppo.advantage_options}: {error}"
            ) from None
        check_online_config(self, ppo_roles(self))
        check_job(self)


def ppo_roles(cfg: PPOConfig) -> list[Role]:
    """The roles a PPO job holds at once: the online ones, plus the critic when it has one."""
    needs_critic = get_advantage(cfg.ppo.advantage).needs_critic
    return online_roles(cfg) + ([trainer_role("critic", cfg.critic)] if needs_critic else [])


@dataclass
class PPOState:
    """Where the run is; saved with every checkpoint."""

    step: int = 0  # optimizer steps of the policy
    round: int = 0  # iterations completed
    kl_coef: float | None = None  # the controller's coefficient after the last iteration


def ppo(cfg: PPOConfig) -> OnlineAlgorithm:
    """PPO's part of the online skeleton: policy and critic groups, experience, PPO epochs."""
    p = cfg.ppo
    return OnlineAlgorithm(
        name=f"PPO ({p.advantage})",
        sizes=RoundSizes(p.iterations, p.prompts_per_iteration, p.eval_prompts, p.eval_every),
        roles=ppo_roles(cfg),
        state_type=PPOState,
        start_groups=partial(start_groups, cfg),
        start_reference=lambda server, groups: start_token_logps(
            server,
            [c.prompt_ids + c.token_ids for g in groups for c in g],
            cfg.reference.chunk_size,
            cfg.ray.call_timeout_s,
        ),
        build_batch=partial(experience, cfg),
        train=partial(train_epochs, cfg),
        finish_round=partial(end_iteration, cfg),
        print_table=print_iterations,
        reports_mismatch_kl=True,  # from the old log-probs (experience's metrics)
        units=lambda batch: batch.num_tokens,  # response tokens: what the losses average over
        empty_hint="every sampled response is empty (no token to train on); check samplers.sampling",
        max_staleness=cfg.rounds.max_staleness,
        response_sums=xp.sequence_sums,  # the reference answers per-token log-probs
    )


@register_loop("ppo", config=PPOConfig, **online_plan(ppo))
def run(cfg: PPOConfig, resume: bool = False, hooks: Sequence[Hook] = ()) -> Path:
    """Runs the iterations; returns the run directory (final policy in ``model/``).

    ``hooks``: called at each phase of the job (``rlhf.driver.online_loop.PhaseEvent``).
    """
    return run_online(cfg, ppo(cfg), resume, hooks)


def start_groups(cfg: PPOConfig, model_path: str, placements: dict) -> dict[str, Any]:
    """The policy group, and the critic's when the estimator needs one (by checkpoint name)."""
    from actors.critic import start_critic
    from actors.ppo_policy import start_ppo_policy

    p = cfg.ppo
    groups = {
        "policy": start_ppo_policy(
            model_path,
            cfg.trainer,
            p.clip_eps,
            p.entropy_coef,
            cfg.device,
            shared=placements.get("trainer"),
            load=cfg.model.for_trainers(cfg.seed),
        )
    }
    if get_advantage(p.advantage).needs_critic:
        groups["critic"] = start_critic(
            cfg.critic_model or model_path,
            cfg.critic,
            p.value_clip_eps,
            cfg.device,
            shared=placements.get("critic"),
            load=cfg.model.for_trainers(cfg.seed),
        )
    return groups


def experience(
    cfg: PPOConfig,
    rnd: Round,
    train_groups: list[ScoredGroup],
    eval_groups: list[ScoredGroup],
    reference: PendingLogps,
) -> tuple[RolloutBatch, dict[str, float]]:
    """The iteration's samples as a batch with old log-probs and values (both groups at once,
    while the reference answers), KL-penalised rewards and advantages; and the metrics of the
    experience."""
    p, groups = cfg.ppo, rnd.job.workers.groups
    kl_coef = kl_controller(p, rnd.job.state.kl_coef).value
    n_train = sum(len(g.completions) for g in train_groups)
    batch, scores = xp.token_batch(train_groups, rnd.job.pad_token_id)
    with rnd.phase("experience"):
        width = batch.input_ids.shape[1]
        logp_refs, order = xp.sharded_forward(
            groups["policy"], "token_logps", batch, cfg.trainer.micro_batch_sequences
        )
        if "critic" in groups:
            value_refs, value_order = xp.sharded_forward(
                groups["critic"], "values", batch, cfg.critic.micro_batch_sequences
            )
    with rnd.phase("reference"):
        ref_lists = reference.get()
    ref = xp.aligned_reference(batch, ref_lists[:n_train])
    with rnd.phase("experience"):
        timeout_s = cfg.ray.call_timeout_s
        names = ranks("policy trainer", len(logp_refs))
        batch.old_logps = xp.gather_rows(
            bounded_get(logp_refs, names, timeout_s, "experience"), width, order
        )
        if "critic" in groups:
            names = ranks("critic", len(value_refs))
            values = bounded_get(value_refs, names, timeout_s, "experience")
            batch.old_values = xp.gather_rows(values, width, value_order)
    behaviour = xp.behaviour_logps(train_groups, width)
    batch, is_stats = xp.importance_weights(batch, behaviour, p.is_cap)
    batch, rewards = xp.advantages_and_returns(
        batch,
        ref,
        scores,
        kl_coef,
        p.kl_estimator,
        p.advantage,
        p.advantage_options,
        cfg.samplers.sampling.n,
        p.whiten_advantages,
    )
    eval_ref = xp.sequence_sums(eval_groups, ref_lists[n_train:])
    return batch, {
        "round": rnd.index,
        **xp.experience_metrics(batch, ref, scores, rewards),
        **is_stats,
        "rollout/mismatch_kl": xp.mismatch_kl(batch, behaviour),  # the loop's, from old_logps
        **sample_metrics("eval", eval_groups, eval_ref),
        "kl_coef": kl_coef,
    }


def train_epochs(cfg: PPOConfig, rnd: Round, batch: RolloutBatch) -> dict[str, float]:
    """PPO epochs over shuffled mini-batches, policy and critic side by side; logs every step,
    returns the last step's metrics."""
    p, groups, state = cfg.ppo, rnd.job.workers.groups, rnd.job.state
    sizes = (cfg.trainer.micro_batch_sequences, cfg.critic.micro_batch_sequences)
    steps = [
        rows
        for epoch in range(p.epochs)
        for rows in xp.minibatches(len(batch), p.minibatch_size, rnd.seed * 31 + epoch)
    ]
    answers = xp.train_steps(
        groups["policy"], groups.get("critic"), batch, steps, sizes, cfg.ray.call_timeout_s
    )
    metrics: dict[str, float] = {}
    for rows, metrics in zip(steps, answers, strict=True):
        first = f"round {rnd.index}'s training sample {int(rows[0])}"
        check_finite_loss(metrics, state.step + 1, first)
        state.step += 1
        rnd.job.logger.log(state.step, metrics)
    return metrics


def end_iteration(cfg: PPOConfig, rnd: Round, batch: RolloutBatch, metrics: dict) -> None:
    """After the sync: the KL controller moves (kept in the state), and the iteration's
    samples trained on per second and generation's share of its time join its metrics."""
    kl_ctl = kl_controller(cfg.ppo, rnd.job.state.kl_coef)
    kl_ctl.update(metrics["train/kl"], n_steps=len(batch))
    rnd.job.state.kl_coef = kl_ctl.value
    elapsed = time.perf_counter() - rnd.started
    metrics["samples_per_s"] = len(batch) / elapsed
    metrics["time/generate_share"] = rnd.timer.seconds["generate"] / elapsed


def kl_controller(p: PPOSettings, resumed_coef: float | None):
    """A fixed coefficient, or the adaptive controller when ``kl_target`` is set."""
    coef = p.kl_coef if resumed_coef is None else resumed_coef
    if p.kl_target is None:
        return FixedKLController(coef)
    return AdaptiveKLController(coef, p.kl_target, p.kl_horizon)


def print_iterations(run_dir: Path) -> None:
    """A table of the iterations: held-out reward, KL, losses, time and generation's share."""
    rows = [r for r in read_metrics(run_dir) if "eval/reward/mean" in r]
    print("\niter  held-out reward  KL(policy||ref)  policy loss  clip frac  samples/s  gen share")
    for r in rows:
        print(
            f"{r['round']:4d}  {r['eval/reward/mean']:15.3f}  {r['eval/kl']:15.3f}  "
            f"{r['policy/policy_loss']:11.4f}  {r['policy/clip_fraction']:9.3f}  "
            f"{r['samples_per_s']:9.1f}  {r['time/generate_share']:9.0%}"
        )

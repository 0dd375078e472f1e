"""PPO (and the critic-free GRPO, RLOO, REINFORCE++) in the same driver as DPO.

    rlhf train configs/ppo.yaml ppo.advantage=grpo

Each iteration: the samplers (vLLM) draw K responses per prompt from the current policy, the
reward actor scores them, the reference server (vLLM) gives per-token reference log-probs, the
policy and critic groups (DeepSpeed) give old log-probs and values; per-token KL-penalised
rewards go through the configured advantage estimator; then several PPO epochs over
mini-batches train the policy (clipped ratio) and the critic (clipped values) side by side, and
the new weights are pushed into the samplers. No critic is started when the estimator needs
none.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import ray
import torch
from tqdm import tqdm

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
from rlhf.driver import experience as xp
from rlhf.driver.common import ray_session, resolve_model_path
from rlhf.driver.loops import register_loop
from rlhf.driver.online import (
    PhaseTimer,
    SamplersConfig,
    sample_metrics,
    start_rollout_actors,
    sync_weights,
)
from rlhf.driver.preference_training import ReferenceConfig
from rlhf.driver.reference import token_logps
from rlhf.driver.retry import PhaseRetry, named_actors
from rlhf.driver.rollout import ActorScorer, sample, score
from rlhf.driver.setup import (
    check_colocation,
    online_roles,
    open_run,
    place_colocated,
    sleeping_engines,
)
from rlhf.driver.weight_sync import BroadcastSync
from rlhf.models.deepspeed_config import TrainerConfig
from rlhf.plots import plot_rounds
from rlhf.rewards import RewardConfig
from rlhf.run_dir import Checkpoints, MetricsLogger, read_metrics
from rlhf.schema import ModelConfig, RayConfig


@dataclass
class PPOSettings:
    """What one iteration does, and the PPO objective's knobs."""

    iterations: int = 8
    prompts_per_iteration: int = 64  # K samples each (samplers.sampling.n)
    eval_prompts: int = 64  # held-out prompts sampled each iteration (reward and KL)
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

    def validate(self) -> None:
        for key in ("iterations", "prompts_per_iteration", "eval_prompts", "epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1")
        if self.minibatch_size < 1:
            raise ConfigError("minibatch_size must be at least 1")
        if self.clip_eps <= 0 or (self.value_clip_eps is not None and self.value_clip_eps <= 0):
            raise ConfigError("clip_eps and value_clip_eps must be positive (value_clip_eps: null)")
        if self.kl_coef < 0:
            raise ConfigError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if self.kl_estimator not in KL_KINDS:
            raise ConfigError(f"kl_estimator must be one of {', '.join(KL_KINDS)}")
        try:
            get_advantage(self.advantage)
        except (UnknownNameError, ImportError, TypeError) as error:
            raise ConfigError(f"advantage: {error}") from None


@dataclass
class PPOConfig:
    """Settings of a PPO run (``algorithm: ppo``)."""

    algorithm: Literal["ppo"] = "ppo"
    output_dir: str = "runs/ppo"
    seed: int = 0
    device: Literal["cpu", "cuda"] = "cpu"
    reward: RewardConfig = field(default_factory=RewardConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # the policy's
    critic: TrainerConfig = field(default_factory=TrainerConfig)
    critic_model: str | None = None  # the critic's body; None: the policy's model
    samplers: SamplersConfig = field(default_factory=SamplersConfig)
    ppo: PPOSettings = field(default_factory=PPOSettings)
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
        check_colocation(self, ppo_roles(self))


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


@dataclass(frozen=True)
class PPOWorkers:
    """The actors an iteration uses, one field per role."""

    samplers: list
    reference: Any
    reward: Any  # a GroupScorer
    policy: Any  # ActorGroup of PPOPolicy
    critic: Any | None  # ActorGroup of Critic; None for critic-free estimators
    sleepers: list = field(default_factory=list)  # engines asleep while policy and critic work

    def reward_actors(self) -> dict[str, Any]:
        """The reward actor by name, when ``reward`` calls one (a retry waits for it)."""
        return {"reward": self.reward.actor} if isinstance(self.reward, ActorScorer) else {}


@register_loop("ppo", config=PPOConfig)
def run(cfg: PPOConfig, resume: bool = False) -> Path:
    """Runs the iterations; returns the run directory (final policy in ``model/``)."""
    from transformers import AutoTokenizer

    from actors.critic import start_critic
    from actors.ppo_policy import start_ppo_policy
    from rlhf.task import make_prompts

    run_dir = open_run(cfg, resume)
    model_path = resolve_model_path(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(
        model_path, trust_remote_code=cfg.model.trust_remote_code
    )
    p = cfg.ppo
    train_prompts = make_prompts(p.iterations * p.prompts_per_iteration, seed=cfg.seed)
    eval_prompts = make_prompts(p.eval_prompts, seed=cfg.seed, split="eval")
    needs_critic = get_advantage(p.advantage).needs_critic
    roles = ppo_roles(cfg)
    with ray_session(cfg.ray, roles) as scope:
        placements = place_colocated(cfg, roles, scope)  # ray.colocate groups, by role
        samplers, reference, reward = start_rollout_actors(cfg, model_path, scope, placements)
        policy = scope.own(
            start_ppo_policy(
                model_path,
                cfg.trainer,
                p.clip_eps,
                p.entropy_coef,
                cfg.device,
                shared=placements.get("trainer"),
            )
        )
        if cfg.samplers.sync == "broadcast":
            scope.own(BroadcastSync.open(policy, samplers, device=cfg.device))
        critic = None
        if needs_critic:
            critic_path = cfg.critic_model or model_path
            critic = scope.own(
                start_critic(
                    critic_path,
                    cfg.critic,
                    p.value_clip_eps,
                    cfg.device,
                    shared=placements.get("critic"),
                )
            )
        sleepers = sleeping_engines(cfg, samplers, reference)
        workers = PPOWorkers(samplers, reference, reward, policy, critic, sleepers)
        checkpoints = Checkpoints(run_dir, keep=cfg.keep_checkpoints)
        state = (restore_checkpoint(workers, checkpoints) if resume else None) or PPOState()
        kl_ctl = kl_controller(p, state.kl_coef)
        if state.round > 0:  # resumed: the samplers must sample from the restored policy
            sync_weights(policy, samplers, version=state.round)
        logger = MetricsLogger(
            run_dir,
            resume_step=state.step if resume else None,
            resume_round=state.round if resume else None,
        )
        bar = tqdm(total=p.iterations, initial=state.round, desc=cfg.ppo.advantage, unit="iter")
        while state.round < p.iterations:
            prompts = train_prompts[state.round * p.prompts_per_iteration :][
                : p.prompts_per_iteration
            ]
            metrics = run_iteration(
                cfg, state, kl_ctl, prompts, eval_prompts, workers, tokenizer.pad_token_id, logger
            )
            state.round += 1
            state.kl_coef = kl_ctl.value
            logger.log(state.step, metrics)
            save_checkpoint(workers, checkpoints, state)
            bar.update()
            bar.set_postfix(
                reward=f"{metrics['eval/reward/mean']:.3f}", kl=f"{metrics['eval/kl']:.2f}"
            )
        bar.close()
        ray.get(policy.call("save_pretrained", str(run_dir / "model")))
        logger.close()
    plot = plot_rounds(read_metrics(run_dir), run_dir / "rounds.png", f"PPO ({p.advantage})")
    print_iterations(run_dir)
    print(f"run directory: {run_dir} (model in {run_dir / 'model'}, plot {plot})")
    return run_dir


def run_iteration(
    cfg: PPOConfig,
    state: PPOState,
    kl_ctl,
    prompts: list[str],
    eval_prompts: list[str],
    workers: PPOWorkers,
    pad_token_id: int,
    logger: MetricsLogger,
) -> dict[str, float]:
    """One iteration: experience, PPO epochs, weight sync; returns its metrics.

    Generate, score and sync are repeated if a sampler or the reward actor dies (see
    ``rlhf.driver.retry``); the samplers hold weights version ``state.round`` meanwhile.
    """
    p = cfg.ppo
    seed = cfg.seed * 100_003 + state.round
    timer = PhaseTimer()
    retry = PhaseRetry(cfg.ray.phase_retries)
    samplers = named_actors("sampler", workers.samplers)
    start = time.perf_counter()
    with timer("generate"):
        groups = retry(
            "generate",
            lambda: sample(
                workers.samplers,
                prompts + eval_prompts,
                cfg.samplers.sampling,
                seed,
                weights_version=state.round,
            ),
            samplers,
            recover=lambda: sync_weights(workers.policy, workers.samplers, version=state.round),
        )
    with timer("score"):
        scored = retry("score", lambda: score(groups, workers.reward), workers.reward_actors())
    train_groups, eval_groups = scored[: len(prompts)], scored[len(prompts) :]
    with timer("reference"):
        sequences = [c.prompt_ids + c.token_ids for g in scored for c in g.completions]
        ref_lists = token_logps(workers.reference, sequences, cfg.reference.chunk_size)
    n_train = sum(len(g.completions) for g in train_groups)
    batch, ref, scores = xp.rollout_batch(train_groups, ref_lists[:n_train], pad_token_id)
    ray.get([engine.sleep.remote() for engine in workers.sleepers])  # GPU for the trainers
    with timer("experience"):  # old log-probs and values, both groups at once
        width = batch.input_ids.shape[1]
        logp_refs = xp.sharded_forward(
            workers.policy, "token_logps", batch, cfg.trainer.micro_batch_size
        )
        value_refs = workers.critic and xp.sharded_forward(
            workers.critic, "values", batch, cfg.critic.micro_batch_size
        )
        batch.old_logps = xp.gather_rows(ray.get(logp_refs), width)
        if value_refs:
            batch.old_values = xp.gather_rows(ray.get(value_refs), width)
    batch, rewards = xp.advantages_and_returns(
        batch,
        ref,
        scores,
        kl_ctl.value,
        p.kl_estimator,
        p.advantage,
        p.advantage_options,
        cfg.samplers.sampling.n,
        p.whiten_advantages,
    )
    metrics = {
        "round": state.round,
        **xp.experience_metrics(batch, ref, scores, rewards),
        **sample_metrics("eval", eval_groups, xp.sequence_sums(eval_groups, ref_lists[n_train:])),
        "kl_coef": kl_ctl.value,
    }
    with timer("train"):
        sizes = (cfg.trainer.micro_batch_size, cfg.critic.micro_batch_size)
        for epoch in range(p.epochs):
            for rows in xp.minibatches(len(batch), p.minibatch_size, seed * 31 + epoch):
                step_metrics = xp.train_minibatch(
                    workers.policy, workers.critic, batch.select(rows), sizes
                )
                state.step += 1
                logger.log(state.step, step_metrics)
    metrics.update(step_metrics)
    ray.get([engine.wake_up.remote() for engine in workers.sleepers])  # before the sync
    with timer("sync"):
        metrics["sync_bytes"] = retry(
            "sync",
            lambda: sync_weights(workers.policy, workers.samplers, version=state.round + 1),
            samplers,
        )
    metrics["retries"] = retry.count
    kl_ctl.update(metrics["train/kl"], n_steps=len(batch))
    metrics.update({f"time/{k}": v for k, v in timer.seconds.items()})
    elapsed = time.perf_counter() - start
    metrics["samples_per_s"] = len(batch) / elapsed
    metrics["time/generate_share"] = timer.seconds["generate"] / elapsed
    return metrics


def kl_controller(p: PPOSettings, resumed_coef: float | None):
    """A fixed coefficient, or the adaptive controller when ``kl_target`` is set."""
    coef = p.kl_coef if resumed_coef is None else resumed_coef
    if p.kl_target is None:
        return FixedKLController(coef)
    return AdaptiveKLController(coef, p.kl_target, p.kl_horizon)


def save_checkpoint(workers: PPOWorkers, checkpoints: Checkpoints, state: PPOState) -> Path:
    """Policy and critic DeepSpeed states into one staging dir, then it becomes the latest."""
    staging = checkpoints.staging_dir(state.step)
    refs = workers.policy.call("save_checkpoint", str(staging), "policy", {})
    if workers.critic is not None:
        refs += workers.critic.call("save_checkpoint", str(staging), "critic", {})
    ray.get(refs)
    return checkpoints.commit(staging, asdict(state))


def restore_checkpoint(workers: PPOWorkers, checkpoints: Checkpoints) -> PPOState | None:
    """Loads the latest checkpoint into the groups; None when the run has none."""
    latest = checkpoints.latest()
    if latest is None:
        return None
    refs = workers.policy.call("load_checkpoint", str(latest), "policy")
    if workers.critic is not None:
        refs += workers.critic.call("load_checkpoint", str(latest), "critic")
    ray.get(refs)
    return PPOState(**checkpoints.driver_state(latest))


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

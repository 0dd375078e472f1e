"""Online / iterative DPO: sample, score, rank, reference, train, sync; repeat.

    rlhf train configs/online_dpo.yaml rounds.rounds=8 loss.name=plackett_luce rounds.strategy=ranking

Every round's samples, scores and preferences are written as Parquet under
``<run_dir>/rounds/round_NNNN/``; metrics per round go to ``metrics.jsonl``.

Faults: a sampler or reward actor that dies is restarted by Ray and the round's phase is run
again (``rlhf.driver.retry``); a killed driver continues with ``--resume`` from the last round's
checkpoint. Prompts, sampling seeds and batch order are functions of (seed, round), so a resumed
or retried round draws the same samples as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from tqdm import tqdm

from rlhf.algorithms.registry import UnknownNameError
from rlhf.config import ConfigError
from rlhf.data.errors import DataReport
from rlhf.data.strategies import get_pair_strategy, uniform_preferences
from rlhf.data.table import build_table, with_ref_logps
from rlhf.driver.common import (
    ray_session,
    resolve_model_path,
)
from rlhf.driver.loops import register_loop
from rlhf.driver.online import (
    PhaseTimer,
    SamplersConfig,
    sample_metrics,
    start_rollout_actors,
    sync_weights,
)
from rlhf.driver.preference_training import (
    LossConfig,
    ReferenceConfig,
    ScheduleConfig,
    TrainState,
    epoch_batches,
    hold_table,
    restore_checkpoint,
    save_checkpoint,
    step_metrics,
    submit_step,
)
from rlhf.driver.reference import response_logps
from rlhf.driver.retry import PhaseRetry, named_actors
from rlhf.driver.rollout import (
    ActorScorer,
    GroupScorer,
    ScoredGroup,
    sample,
    score,
)
from rlhf.driver.setup import (
    check_colocation,
    online_roles,
    open_run,
    place_colocated,
    sleeping_engines,
    start_trainers,
)
from rlhf.driver.weight_sync import BroadcastSync
from rlhf.files import atomic_path
from rlhf.models.deepspeed_config import TrainerConfig
from rlhf.plots import plot_rounds
from rlhf.rewards import RewardConfig
from rlhf.run_dir import Checkpoints, MetricsLogger, read_metrics
from rlhf.schema import ModelConfig, RayConfig


@dataclass
class RoundsConfig:
    """What one round does and how many there are."""

    rounds: int = 6
    prompts_per_round: int = 64
    epochs_per_round: int = 1  # passes of DPO over the round's preferences
    eval_prompts: int = 64  # held-out prompts sampled each round to measure reward and KL
    strategy: str = "best_vs_worst"  # best_vs_worst | all_pairs | ranking | a plugin
    tie_tolerance: float = 0.0
    reference_update: Literal["fixed", "previous_round"] = "fixed"

    def validate(self) -> None:
        for key in ("rounds", "prompts_per_round", "epochs_per_round", "eval_prompts"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1")
        try:
            get_pair_strategy(self.strategy)
        except UnknownNameError as error:
            raise ConfigError(f"strategy: {error}") from None


@dataclass
class OnlineDPOConfig:
    """Settings of an online DPO run (``algorithm: online_dpo``)."""

    algorithm: Literal["online_dpo"] = "online_dpo"
    output_dir: str = "runs/online_dpo"
    seed: int = 0
    device: Literal["cpu", "cuda"] = "cpu"
    reward: RewardConfig = field(default_factory=RewardConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    samplers: SamplersConfig = field(default_factory=SamplersConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self) -> None:
        ranking = get_pair_strategy(self.rounds.strategy).metadata.get("ranking", False)
        if ranking and self.samplers.sampling.n < 2:
            raise ConfigError("samplers.sampling.n must be at least 2 to rank responses")
        check_colocation(self, online_roles(self))


@register_loop("online_dpo", config=OnlineDPOConfig)
def run(cfg: OnlineDPOConfig, resume: bool = False) -> Path:
    """Runs the rounds; returns the run directory (final policy in ``model/``)."""
    from transformers import AutoTokenizer

    from rlhf.task import make_prompts

    run_dir = open_run(cfg, resume)
    model_path = resolve_model_path(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(
        model_path, trust_remote_code=cfg.model.trust_remote_code
    )
    r = cfg.rounds
    train_prompts = make_prompts(r.rounds * r.prompts_per_round, seed=cfg.seed, split="train")
    eval_prompts = make_prompts(r.eval_prompts, seed=cfg.seed, split="eval")
    roles = online_roles(cfg)
    with ray_session(cfg.ray, roles) as scope:
        placements = place_colocated(cfg, roles, scope)  # ray.colocate groups, by role
        samplers, reference, reward = start_rollout_actors(cfg, model_path, scope, placements)
        group = scope.own(start_trainers(cfg, model_path, placements.get("trainer")))
        if cfg.samplers.sync == "broadcast":
            moved = reference if _moves_reference(cfg) else None
            scope.own(BroadcastSync.open(group, samplers, moved, cfg.device))
        sleepers = sleeping_engines(cfg, samplers, reference)
        workers = Workers(samplers, reference, reward, group, sleepers)
        checkpoints = Checkpoints(run_dir, keep=cfg.schedule.keep_checkpoints)
        state = (restore_checkpoint(group, checkpoints) if resume else None) or TrainState()
        if state.round > 0:  # resumed: the samplers must sample from the restored policy
            moved = reference if _moves_reference(cfg) else None
            sync_weights(group, samplers, moved, version=state.round)
        logger = MetricsLogger(
            run_dir,
            resume_step=state.step if resume else None,
            resume_round=state.round if resume else None,
        )
        bar = tqdm(total=r.rounds, initial=state.round, desc="online dpo", unit="round")
        while state.round < r.rounds:
            prompts = train_prompts[state.round * r.prompts_per_round :][: r.prompts_per_round]
            metrics = run_round(
                cfg, state, prompts, eval_prompts, workers, tokenizer.pad_token_id, logger, run_dir
            )
            state.round += 1
            logger.log(state.step, metrics)
            save_checkpoint(group, checkpoints, state)
            bar.update()
            bar.set_postfix(
                reward=f"{metrics['eval/reward/mean']:.3f}", kl=f"{metrics['eval/kl']:.2f}"
            )
        bar.close()
        ray.get(group.call("save_pretrained", str(run_dir / "model")))
        logger.close()
    plot = plot_rounds(read_metrics(run_dir), run_dir / "rounds.png", "online DPO")
    print_rounds(run_dir)
    print(f"run directory: {run_dir} (model in {run_dir / 'model'}, plot {plot})")
    return run_dir


@dataclass(frozen=True)
class Workers:
    """The actors a round uses, one field per role."""

    samplers: list  # vLLM sampler actors
    reference: Any  # the reference server actor
    reward: GroupScorer  # scores groups of responses (the reward actor, remotely)
    trainers: Any  # the policy trainer ActorGroup
    sleepers: list = field(default_factory=list)  # engines asleep while the trainers train

    def reward_actors(self) -> dict[str, Any]:
        """The reward actor by name, when ``reward`` calls one (a retry waits for it)."""
        return {"reward": self.reward.actor} if isinstance(self.reward, ActorScorer) else {}


def run_round(
    cfg: OnlineDPOConfig,
    state: TrainState,
    prompts: list[str],
    eval_prompts: list[str],
    workers: Workers,
    pad_token_id: int,
    logger: MetricsLogger,
    run_dir: Path,
) -> dict[str, float]:
    """One round; returns its metrics (sample rewards, KL, preference counts, phase times).

    Generate, score and sync are repeated if a sampler or the reward actor dies (``retries``
    counts the repeats); the samplers hold weights version ``state.round`` during the round.
    """
    seed = cfg.seed * 100_003 + state.round
    timer = PhaseTimer()
    retry = PhaseRetry(cfg.ray.phase_retries)
    samplers = named_actors("sampler", workers.samplers)
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
            recover=lambda: sync_weights(workers.trainers, workers.samplers, version=state.round),
        )
    with timer("score"):
        scored = retry("score", lambda: score(groups, workers.reward), workers.reward_actors())
    train_groups, eval_groups = scored[: len(prompts)], scored[len(prompts) :]
    with timer("reference"):
        ref = reference_logps(workers.reference, scored, cfg.reference.chunk_size)
    train_ref, eval_ref = ref[: len(prompts)], ref[len(prompts) :]
    table, ties = preference_table(train_groups, train_ref, cfg.rounds, state.round)
    write_round(run_dir, state.round, train_groups, train_ref, eval_groups, eval_ref, table)
    metrics = {
        "round": state.round,
        **sample_metrics("train", train_groups, train_ref),
        **sample_metrics("eval", eval_groups, eval_ref),
        "preferences": table.num_rows,
        "ties_dropped": ties,
    }
    with timer("train"):
        if table.num_rows:
            ray.get([engine.sleep.remote() for engine in workers.sleepers])  # GPU for training
            train_metrics = train_on(cfg, state, workers.trainers, table, pad_token_id, logger)
            ray.get([engine.wake_up.remote() for engine in workers.sleepers])  # before the sync
            metrics.update({f"train/{k}": v for k, v in train_metrics.items()})
    with timer("sync"):
        moved = workers.reference if _moves_reference(cfg) else None
        metrics["sync_bytes"] = retry(
            "sync",
            lambda: sync_weights(workers.trainers, workers.samplers, moved, state.round + 1),
            samplers | ({"reference": moved} if moved is not None else {}),
        )
    metrics["retries"] = retry.count
    metrics.update({f"time/{k}": v for k, v in timer.seconds.items()})
    return metrics


def reference_logps(reference, groups: list[ScoredGroup], chunk: int) -> list[list[float]]:
    """Reference log-probs of every sampled response, grouped like the samples."""
    prompts = [c.prompt_ids for g in groups for c in g.completions]
    responses = [c.token_ids for g in groups for c in g.completions]
    flat = response_logps(reference, prompts, responses, chunk)
    out, start = [], 0
    for g in groups:
        out.append(flat[start : start + len(g.completions)])
        start += len(g.completions)
    return out


def preference_table(
    groups: list[ScoredGroup], ref: list[list[float]], rounds: RoundsConfig, round_index: int
) -> tuple[pa.Table, int]:
    """The round's preferences in the tokenized-table layout, with reference log-probs."""
    source_rows, prompt_ids, response_ids, ref_logps, ties = [], [], [], [], 0
    for row, (g, g_ref) in enumerate(zip(groups, ref, strict=True)):
        prefs = uniform_preferences(rounds.strategy, g.scores, rounds.tie_tolerance)
        ties += prefs.ties_dropped
        for ranking in prefs.rankings:
            source_rows.append(row)
            prompt_ids.append(g.completions[0].prompt_ids)
            response_ids.append([g.completions[i].token_ids for i in ranking])
            ref_logps.append([g_ref[i] for i in ranking])
    report = DataReport(path=f"round {round_index} samples", rows_read=len(groups))
    report.rows_kept = len(source_rows)
    table = build_table(source_rows, prompt_ids, response_ids, report)
    if table.num_rows:
        table = with_ref_logps(table, ref_logps)
    return table, ties


def train_on(cfg, state: TrainState, group, table: pa.Table, pad: int, logger) -> dict:
    """DPO steps over the round's preferences; logs every step, returns the last step's metrics.

    The ranks hold the round's table; every step of the round is submitted at once (they run
    in order) and the driver logs them as they finish.
    """
    hold_table(group, "round", table, pad)
    batch_size = cfg.trainer.prompts_per_step
    steps = []
    for epoch in range(cfg.rounds.epochs_per_round):
        position = TrainState(epoch=state.round * cfg.rounds.epochs_per_round + epoch)
        # Grouped by the longest prompt + response even when the trainer shares prompts: a
        # round is a few steps, so padding barely counts, and grouping by the shared row's
        # length moved the demo's policy much faster (KL 180 against 14 after 8 rounds).
        for indices in epoch_batches(table, batch_size, cfg.schedule, cfg.seed, position):
            steps.append(submit_step(group, "round", indices))
    last: dict[str, float] = {}
    for refs in steps:
        last = step_metrics(refs)
        state.step += 1
        state.tokens += int(last.get("tokens", 0))
        logger.log(state.step, {f"train/{k}": v for k, v in last.items()})
    return last


def write_round(run_dir: Path, index: int, train_groups, train_ref, eval_groups, eval_ref, table):
    """Samples (with scores and log-probs) and preferences of one round, as Parquet."""
    out = run_dir / "rounds" / f"round_{index:04d}"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, groups, ref in (("train", train_groups, train_ref), ("eval", eval_groups, eval_ref)):
        for g, g_ref in zip(groups, ref, strict=True):
            for k, (c, s, r) in enumerate(zip(g.completions, g.scores, g_ref, strict=True)):
                rows.append(
                    {
                        "split": split,
                        "prompt": g.prompt,
                        "sample": k,
                        "response": c.text,
                        "score": s,
                        "logprob": c.logprob,
                        "ref_logprob": r,
                        "finished": c.finished,
                        "prompt_ids": c.prompt_ids,
                        "response_ids": c.token_ids,
                    }
                )
    for name, data in (
        ("samples.parquet", pa.Table.from_pylist(rows)),
        ("preferences.parquet", table),
    ):
        with atomic_path(out / name) as tmp:
            pq.write_table(data, tmp)


def print_rounds(run_dir: Path) -> None:
    """A table of the rounds, then one held-out prompt's samples in the first and last round."""
    rounds = [r for r in read_metrics(run_dir) if "eval/reward/mean" in r]
    print("\nround  held-out reward  KL(policy||ref)  train reward  preferences  round time")
    for r in rounds:
        seconds = sum(v for k, v in r.items() if k.startswith("time/"))
        print(
            f"{r['round']:5d}  {r['eval/reward/mean']:15.3f}  {r['eval/kl']:15.3f}  "
            f"{r['train/reward/mean']:12.3f}  {r['preferences']:11d}  {seconds:9.1f}s"
        )
    first, last = rounds[0]["round"], rounds[-1]["round"]
    for index in dict.fromkeys((first, last)):
        path = run_dir / "rounds" / f"round_{index:04d}" / "samples.parquet"
        rows = [r for r in pq.read_table(path).to_pylist() if r["split"] == "eval"][:4]
        print(f"\nround {index}, held-out prompt: {rows[0]['prompt']}")
        for row in rows:
            print(f"   {row['score']:.3f}  {row['response'].strip()}")


def _moves_reference(cfg: OnlineDPOConfig) -> bool:
    return cfg.rounds.reference_update == "previous_round"

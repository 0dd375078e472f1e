"""Online / iterative DPO: sample, score, rank, reference, train, sync; repeat.

    rlhf train configs/online_dpo.yaml rounds.rounds=8 loss.name=plackett_luce rounds.strategy=ranking

Every round's samples, scores and preferences are written as Parquet under
``<run_dir>/rounds/round_NNNN/``; metrics per round go to ``metrics.jsonl``. The rounds run in
the online skeleton (``rlhf.driver.online_loop``: start-up, retries of dead actors, weight sync,
checkpoints and ``--resume``); this module is what online DPO adds: its config, preference
tables from each round's scored samples, and DPO steps on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import ClassVar, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from rlhf.algorithms.registry import UnknownNameError
from rlhf.config import ConfigError
from rlhf.data.errors import DataReport
from rlhf.data.loader import batches
from rlhf.data.prompts import PromptsConfig
from rlhf.data.strategies import get_pair_strategy, uniform_preferences
from rlhf.data.table import build_table, source_of, with_ref_logps
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
from rlhf.driver.preference_training import (
    LossConfig,
    ReferenceConfig,
    TrainState,
    check_loss_strategy,
    hold_table,
    step_metrics,
    submit_step,
)
from rlhf.driver.reference import PendingLogps, start_response_logps
from rlhf.driver.rollout import ScoredGroup
from rlhf.driver.setup import online_roles, start_trainers
from rlhf.files import atomic_path
from rlhf.models.deepspeed_config import PreferenceTrainerConfig
from rlhf.models.vllm_engine import Completion
from rlhf.rewards import RewardConfig
from rlhf.run_dir import read_metrics
from rlhf.schema import ModelConfig, RayConfig, check_job


@dataclass
class RoundsConfig:
    """What one round does and how many there are."""

    rounds: int = 6
    prompts_per_round: int = 64
    epochs_per_round: int = 1  # passes of DPO over the round's preferences
    eval_prompts: int = 64  # held-out prompts sampled each round to measure reward and KL
    eval_every: int = 1  # rounds 0, n, 2n, ... sample them (and the final weights, always)
    strategy: str = "best_vs_worst"  # best_vs_worst | all_pairs | ranking | a plugin
    tie_tolerance: float = 0.0
    reference_update: Literal["fixed", "previous_round"] = "fixed"
    length_grouping: bool = True  # each step's prompts of similar length (less padding)
    # Rounds sampled ahead on older weights while the trainers train (0: synchronous rounds);
    # a round's samples come from weights at most this many versions old.
    max_staleness: int = 0

    def validate(self) -> None:
        for key in (
            "rounds",
            "prompts_per_round",
            "epochs_per_round",
            "eval_prompts",
            "eval_every",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1")
        if self.tie_tolerance < 0:
            raise ConfigError(f"tie_tolerance must be >= 0, got {self.tie_tolerance}")
        try:
            get_pair_strategy(self.strategy)
        except UnknownNameError as error:
            raise ConfigError(f"strategy: {error}") from None


@dataclass
class OnlineDPOConfig:
    """Settings of an online DPO run (``algorithm: online_dpo``)."""

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "schedule": "online DPO read two of its keys; set rounds.length_grouping and "
        "keep_checkpoints (top level) instead",
    }

    algorithm: Literal["online_dpo"] = "online_dpo"
    output_dir: str = "runs/online_dpo"
    seed: int = 0
    device: Literal["cpu", "cuda"] = "cpu"
    reward: RewardConfig = field(default_factory=RewardConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)  # embedded, or the user's
    loss: LossConfig = field(default_factory=LossConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    trainer: PreferenceTrainerConfig = field(default_factory=PreferenceTrainerConfig)
    samplers: SamplersConfig = field(default_factory=SamplersConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    keep_checkpoints: int = 2  # the last rounds' checkpoints kept (one per round)
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self) -> None:
        check_online_config(self, online_roles(self))
        # A run that can never train is refused here: every round would build no preference.
        strategy = get_pair_strategy(self.rounds.strategy)
        need = strategy.metadata.get("min_responses", 2)
        if self.samplers.sampling.n < need:
            raise ConfigError(
                f"samplers.sampling.n is {self.samplers.sampling.n}, but rounds.strategy "
                f"{self.rounds.strategy!r} builds preferences from at least {need} responses per "
                f"prompt, so no round would train; set samplers.sampling.n to {need} or more"
            )
        check_loss_strategy(self.loss.name, self.rounds.strategy, self.samplers.sampling.n)
        check_job(self)


def online_dpo(cfg: OnlineDPOConfig) -> OnlineAlgorithm:
    """Online DPO's part of the online skeleton: one trainer group, preference tables, DPO."""
    r = cfg.rounds
    return OnlineAlgorithm(
        name="online DPO",
        sizes=RoundSizes(r.rounds, r.prompts_per_round, r.eval_prompts, r.eval_every),
        roles=online_roles(cfg),
        state_type=TrainState,
        start_groups=lambda model_path, placements: {
            "trainer": start_trainers(cfg, model_path, placements.get("trainer"))
        },
        start_reference=lambda server, groups: start_reference(
            server, groups, cfg.reference.chunk_size, cfg.ray.call_timeout_s
        ),
        build_batch=partial(preference_batch, cfg),
        train=partial(train_on, cfg),
        print_table=print_rounds,
        moves_reference=r.reference_update == "previous_round",
        max_staleness=r.max_staleness,
        empty_hint=NO_PREFERENCES,
    )


# What to do when a round builds no preference (``rlhf.driver.online_loop.NoTrainingDataError``).
NO_PREFERENCES = (
    "every prompt's responses scored alike (within rounds.tie_tolerance), so no preference was "
    "built; raise samplers.sampling.temperature or samplers.sampling.n, lower "
    "rounds.tie_tolerance, or check that the reward tells the responses apart"
)


@register_loop("online_dpo", config=OnlineDPOConfig, **online_plan(online_dpo))
def run(cfg: OnlineDPOConfig, resume: bool = False, hooks: Sequence[Hook] = ()) -> Path:
    """Runs the rounds; returns the run directory (final policy in ``model/``).

    ``hooks``: called at each phase of the job (``rlhf.driver.online_loop.PhaseEvent``).
    """
    return run_online(cfg, online_dpo(cfg), resume, hooks)


def preference_batch(
    cfg: OnlineDPOConfig,
    rnd: Round,
    train_groups: list[ScoredGroup],
    eval_groups: list[ScoredGroup],
    reference: PendingLogps,
) -> tuple[pa.Table, dict[str, float]]:
    """The round's preference table (written with its samples under ``rounds/``) and the
    metrics of its samples: rewards, KL, preference counts."""
    with rnd.phase("reference"):
        ref = reference.get()
    train_ref, eval_ref = ref[: len(train_groups)], ref[len(train_groups) :]
    table, ties = preference_table(train_groups, train_ref, cfg.rounds, rnd.index)
    write_round(
        rnd.job.run_dir,
        rnd.index,
        train_groups,
        train_ref,
        eval_groups,
        eval_ref,
        table,
        rnd.policy_version,
    )
    return table, {
        "round": rnd.index,
        **sample_metrics("train", train_groups, train_ref),
        **sample_metrics("eval", eval_groups, eval_ref),
        "preferences": table.num_rows,
        "ties_dropped": ties,
    }


def start_reference(
    reference, groups: list[list[Completion]], chunk: int, timeout_s: float | None = None
) -> PendingLogps:
    """Asks the reference log-probs of every sampled response; the answer is grouped like
    the samples."""
    prompts = [c.prompt_ids for g in groups for c in g]
    responses = [c.token_ids for g in groups for c in g]

    def grouped(flat: list[float]) -> list[list[float]]:
        out, start = [], 0
        for g in groups:
            out.append(flat[start : start + len(g)])
            start += len(g)
        return out

    pending = start_response_logps(reference, prompts, responses, chunk, timeout_s)
    return pending.then(grouped)


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


def train_on(cfg: OnlineDPOConfig, rnd: Round, table: pa.Table) -> dict[str, float]:
    """DPO steps over the round's preferences; logs every step, returns the last step's
    metrics as ``train/...`` (none for a round without preferences).

    The ranks hold the round's table; every step of the round is submitted at once (they run
    in order) and the driver logs them as they finish.
    """
    if not table.num_rows:
        return {}
    state, group = rnd.job.state, rnd.job.workers.policy
    hold_table(group, "round", table, rnd.job.pad_token_id, cfg.ray.call_timeout_s)
    epochs = cfg.rounds.epochs_per_round
    steps = []
    for epoch in range(epochs):
        # Grouped by the longest prompt + response even when the trainer shares prompts: a
        # round is a few steps, so padding barely counts, and grouping by the shared row's
        # length moved the demo's policy much faster (KL 180 against 14 after 8 rounds).
        order = batches(
            table,
            cfg.trainer.prompts_per_step,
            cfg.seed,
            state.round * epochs + epoch,
            length_grouping=cfg.rounds.length_grouping,
        )
        steps += [(indices, submit_step(group, "round", indices)) for indices in order]
    last: dict[str, float] = {}
    for indices, refs in steps:
        last = step_metrics(refs, cfg.ray.call_timeout_s)  # a rank that died: named at once
        check_finite_loss(last, state.step + 1, source_of(table, indices[0]))
        state.step += 1
        state.tokens += int(last.get("tokens", 0))
        rnd.job.logger.log(state.step, {f"train/{k}": v for k, v in last.items()})
    return {f"train/{k}": v for k, v in last.items()}


def write_round(
    run_dir: Path,
    index: int,
    train_groups,
    train_ref,
    eval_groups,
    eval_ref,
    table,
    policy_version: int | None = None,
):
    """Samples (with scores and log-probs) and preferences of one round, as Parquet: each
    sample's prompt as given (a string, or chat messages) and as the sampler got it."""
    out = run_dir / "rounds" / f"round_{index:04d}"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, groups, ref in (("train", train_groups, train_ref), ("eval", eval_groups, eval_ref)):
        for g, g_ref in zip(groups, ref, strict=True):
            for k, (c, s, r) in enumerate(zip(g.completions, g.scores, g_ref, strict=True)):
                rows.append(
                    {
                        "split": split,
                        "prompt": g.prompt_as_given,  # as in the prompt file: text or messages
                        "prompt_text": g.prompt,  # as the sampler got it (chat template applied)
                        "sample": k,
                        "response": c.text,
                        "score": s,
                        "logprob": c.logprob,
                        "ref_logprob": r,
                        "finished": c.finished,
                        "prompt_ids": c.prompt_ids,
                        "response_ids": c.token_ids,
                        "policy_version": policy_version,  # the weights that sampled it
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
        print(f"\nround {index}, held-out prompt: {rows[0]['prompt_text']}")
        for row in rows:
            print(f"   {row['score']:.3f}  {row['response'].strip()}")

"""The skeleton of every online loop (online DPO, PPO), once.

Open the job (run directory, model, tokenizer, prompts, Ray session, placements, actors,
checkpoints, logger); then, round after round: generate -> score -> reference log-probs ->
build the training batch -> train -> sync the new weights into the samplers -> log ->
checkpoint; at the end evaluate the final weights on the held-out prompts (``final/*`` in
``metrics.jsonl``), save the policy, plot the rounds and print their table.

A loop is its config class plus an :class:`OnlineAlgorithm`: the trainer groups it starts, the
state it checkpoints, how a round's scored samples become a training batch and optimizer steps,
and its table. Its entry point hands both to :func:`run_online`::

    @register_loop("my_loop", config=MyConfig)
    def run(cfg: MyConfig, resume: bool = False, hooks: Sequence[Hook] = ()) -> Path:
        return run_online(cfg, my_algorithm(cfg), resume, hooks)

Faults: a sampler or reward actor that dies is restarted by Ray and the round's phase is run
again (``rlhf.driver.retry``); a killed driver continues with ``--resume`` from the last round's
checkpoint. Prompts, sampling seeds and batch order are functions of (seed, round), so a resumed
or retried round draws the same samples as an uninterrupted one.

Rounds without training data: a round whose samples yield nothing to train on (online DPO:
every prompt's responses tied, so no preference) trains no step; it is a logged warning and
``empty_round: 1`` in its metrics, as a later round may sample differently. The run stops with a
:class:`NoTrainingDataError` instead when :data:`MAX_EMPTY_ROUNDS` rounds in a row are empty
(the policy those rounds sample from has not changed, so the next would most likely be empty
too), or when its last round is empty and it has trained no step at all (it would save the
untrained model). The count of rounds in a row starts again with a resumed run.

Hooks: ``run_online(..., hooks=[fn])`` calls ``fn(PhaseEvent)`` when each phase of the job
starts and when it has ended (see :data:`JOB_PHASES` and :data:`ROUND_PHASES`), with the
job's actors once they exist. Benchmarks time phases with them; fault tests kill actors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rlhf.cluster.resources import Role
from rlhf.config import ConfigError
from rlhf.data.prompts import Prompt, PromptSource, job_prompts
from rlhf.driver.checkpoint import restore_checkpoint, save_checkpoint
from rlhf.driver.checks import check_local_device
from rlhf.driver.common import cluster_address, ray_session, resolve_model_path
from rlhf.driver.online import PhaseTimer, sample_metrics, start_rollout_actors, sync_weights
from rlhf.driver.reference import PendingLogps, moving_reference, reference_server
from rlhf.driver.retry import ACTOR_FAILURES, PhaseRetry, bounded_get, named_actors, ranks
from rlhf.driver.rollout import (
    ActorScorer,
    GroupScorer,
    PendingSamples,
    ScoredGroup,
    score,
    start_sampling,
)
from rlhf.driver.setup import (
    check_colocation,
    open_run,
    place_colocated,
    sleeping_engines,
    wait_for_roles,
)
from rlhf.driver.sync_probe import SyncProbe, start_mismatch_kl
from rlhf.driver.weight_sync import AdapterSync, BroadcastSync
from rlhf.models.vllm_engine import Completion
from rlhf.plots import plot_rounds
from rlhf.run_dir import Checkpoints, MetricsLogger, read_metrics
from rlhf.schema import adapter_sync

log = logging.getLogger(__name__)

# The job's phases, in order ("round" and "checkpoint" once per round, with its index).
JOB_PHASES = (
    "ray start",
    "rollout actors",
    "trainers",
    "round",
    "checkpoint",
    "final eval",
    "save model",
    "teardown",
)
# A round's phases, timed into its metrics as ``time/<phase>`` (an algorithm may add its own;
# mismatch_kl and sync_probe run when samplers.sync_probe asks for them).
ROUND_PHASES = ("generate", "score", "reference", "mismatch_kl", "train", "sync", "sync_probe")
# Empty rounds (no training data) in a row that stop the run (see the module's docstring).
MAX_EMPTY_ROUNDS = 3


class NoTrainingDataError(RuntimeError):
    """Rounds yield no training data, and later ones are unlikely to: the run stops."""


@dataclass(frozen=True)
class Workers:
    """The actors a round uses, one field per role."""

    samplers: list  # vLLM sampler actors
    reference: Any  # the reference server actor
    reward: GroupScorer  # scores groups of responses (the reward actor, remotely)
    sleepers: list = field(default_factory=list)  # engines asleep while the trainers train
    groups: dict[str, Any] = field(default_factory=dict)  # trainer groups by checkpoint name

    @property
    def policy(self) -> Any:
        """The group that trains the policy (the first one): its weights go to the samplers."""
        return next(iter(self.groups.values()))

    def reward_actors(self) -> dict[str, Any]:
        """The reward actor by name, when ``reward`` calls one (a retry waits for it)."""
        return {"reward": self.reward.actor} if isinstance(self.reward, ActorScorer) else {}


@dataclass(frozen=True)
class PhaseEvent:
    """What a hook is told: a phase of the job starts, or has ended without an error."""

    phase: str  # one of JOB_PHASES or of a round's phases
    round: int | None  # the round it belongs to; None for the job's own phases
    ended: bool  # False when it starts
    workers: Workers | None  # the actors started so far (None before any)


Hook = Callable[[PhaseEvent], None]


class Hooks:
    """The hooks of one job; ``with hooks.phase(name): ...`` tells them it starts and ends."""

    def __init__(self, hooks: Sequence[Hook] = ()) -> None:
        self.hooks = list(hooks)
        self.workers: Workers | None = None  # what the events carry; set as actors start

    def emit(self, phase: str, round_index: int | None, ended: bool) -> None:
        """Calls every hook with the event, in the order they were given."""
        for hook in self.hooks:
            hook(PhaseEvent(phase, round_index, ended, self.workers))

    @contextlib.contextmanager
    def phase(self, name: str, round_index: int | None = None) -> Iterator[None]:
        self.emit(name, round_index, ended=False)
        yield
        self.emit(name, round_index, ended=True)


@dataclass(frozen=True)
class RoundSizes:
    """How many rounds, training prompts per round, held-out prompts, and every how many rounds
    they are sampled (the first round's and the final weights are always evaluated)."""

    rounds: int
    prompts_per_round: int
    eval_prompts: int
    eval_every: int = 1


@dataclass(frozen=True)
class OnlineAlgorithm:
    """What an online loop adds to the skeleton: :func:`run_online` calls these, in this order.

    The engines listed in ``Workers.sleepers`` sleep from ``build_batch`` until ``train`` ends.
    """

    name: str  # the progress bar's label and the plot's title
    sizes: RoundSizes
    roles: list[Role]  # what the job holds at once (``ray_session`` checks the cluster)
    state_type: type  # the loop's state: a dataclass with ``step`` and ``round``, checkpointed
    # The trainer groups, by checkpoint name (the policy's first): (model path, placements).
    start_groups: Callable[[str, dict[str, Any]], dict[str, Any]]
    # Asks the reference log-probs of every sample: (reference server, the samples' groups of
    # completions) -> a request whose ``get()`` returns them (``rlhf.driver.reference``).
    start_reference: Callable[[Any, list[list[Completion]]], PendingLogps]
    # (round, train groups, held-out groups, the reference request) -> (batch, metrics); it
    # waits for the reference's answer where it needs it, in the round's "reference" phase.
    build_batch: Callable[
        [Round, list[ScoredGroup], list[ScoredGroup], PendingLogps], tuple[Any, dict]
    ]
    # Optimizer steps on the batch (each logged); returns the round's training metrics.
    train: Callable[[Round, Any], dict[str, float]]
    print_table: Callable[[Path], None]  # the rounds' table, read from the run directory
    moves_reference: bool = False  # the reference takes the policy's weights at every sync
    # build_batch's metrics hold rollout/mismatch_kl (PPO: from its old log-probs); otherwise
    # the loop measures it with a forward pass on the trainers (samplers.sync_probe.mismatch_kl).
    reports_mismatch_kl: bool = False
    # rounds.max_staleness: rounds sampled ahead, while the trainers train, on older weights.
    max_staleness: int = 0
    # After the sync: adds metrics that need the whole round (round, batch, metrics).
    finish_round: Callable[[Round, Any, dict[str, float]], None] | None = None
    # The training units of a round's batch (0: nothing to train on; see NoTrainingDataError),
    # and what to do when a round has none.
    units: Callable[[Any], int] = len
    empty_hint: str = "check the reward and the sampling settings"
    # The reference's answer as each response's log-prob sum, grouped like the samples (the
    # final evaluation's KL); the default: the answer holds those sums already.
    response_sums: Callable[[list[ScoredGroup], Any], list[list[float]]] = lambda groups, ref: ref


@dataclass
class Job:
    """An open online job: what :func:`open_job` starts and every round uses."""

    cfg: Any
    algorithm: OnlineAlgorithm
    run_dir: Path
    pad_token_id: int
    prompt_source: PromptSource  # every round's training prompts (``for_round``)
    eval_prompts: list[Prompt]  # the same held-out prompts in each round that evaluates
    workers: Workers
    checkpoints: Checkpoints
    state: Any  # the algorithm's state_type
    logger: MetricsLogger
    hooks: Hooks
    # Sampling started ahead (rounds.max_staleness > 0), by round; checkpointed with the rounds.
    in_flight: dict[int, PendingSamples] = field(default_factory=dict)
    empty_rounds: int = 0  # rounds in a row, up to the last one, without training data
    probe: SyncProbe | None = None  # checks every sync (samplers.sync_probe)

    def prompts(self, round_index: int) -> list[Prompt]:
        """The training prompts of round ``round_index``."""
        return self.prompt_source.for_round(round_index, self.algorithm.sizes.prompts_per_round)

    def held_out(self, round_index: int) -> list[Prompt]:
        """The held-out prompts round ``round_index`` samples after its training prompts: all of
        them in the rounds that evaluate (0, ``eval_every``, 2 ``eval_every``, ...), else none."""
        evaluates = round_index % self.algorithm.sizes.eval_every == 0
        return self.eval_prompts if evaluates else []


@dataclass
class Round:
    """One round in progress, as an algorithm's ``build_batch`` and ``train`` see it."""

    job: Job
    index: int  # rounds completed before it; the trainers hold weights version ``index``
    seed: int  # sampling and shuffling seed, a function of (cfg.seed, index)
    # The weights version that sampled the round (index - policy_version <= max_staleness).
    policy_version: int | None = None
    timer: PhaseTimer = field(default_factory=PhaseTimer)
    started: float = field(default_factory=time.perf_counter)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Times a phase into ``time/<name>`` and tells the hooks."""
        with self.timer(name), self.job.hooks.phase(name, self.index):
            yield


def run_online(
    cfg: Any, algorithm: OnlineAlgorithm, resume: bool = False, hooks: Sequence[Hook] = ()
) -> Path:
    """Runs the rounds; returns the run directory (final policy in ``model/``)."""
    with open_job(cfg, algorithm, resume, Hooks(hooks)) as job:
        state, sizes = job.state, algorithm.sizes
        bar = tqdm(total=sizes.rounds, initial=state.round, desc=algorithm.name, unit="round")
        while state.round < sizes.rounds:
            with job.hooks.phase("round", state.round):
                metrics = run_round(job)
            state.round += 1
            job.logger.log(state.step, metrics)
            with job.hooks.phase("checkpoint", state.round - 1):
                save_checkpoint(
                    job.workers.groups,
                    job.checkpoints,
                    state,
                    lambda staging: write_in_flight(job.in_flight, staging),
                    cfg.ray.call_timeout_s,
                )
            bar.update()
            if "eval/reward/mean" in metrics:  # a round that evaluated (eval_every)
                bar.set_postfix(
                    reward=f"{metrics['eval/reward/mean']:.3f}", kl=f"{metrics['eval/kl']:.2f}"
                )
        bar.close()
        with job.hooks.phase("final eval"):
            final = evaluate_final(job)
        job.logger.log(state.step, final)
        with job.hooks.phase("save model"):
            refs = job.workers.policy.call("save_pretrained", str(job.run_dir / "model"))
            names = ranks("trainer", len(refs))
            bounded_get(refs, names, cfg.ray.call_timeout_s, "saving the model")
    run_dir = job.run_dir
    plot = plot_rounds(read_metrics(run_dir), run_dir / "rounds.png", algorithm.name)
    algorithm.print_table(run_dir)
    print(
        f"final weights (version {final['final/policy_version']}): held-out reward "
        f"{final['final/reward/mean']:.3f}, KL(policy||ref) {final['final/kl']:.3f}"
    )
    print(f"run directory: {run_dir} (model in {run_dir / 'model'}, plot {plot})")
    return run_dir


def evaluate_final(job: Job) -> dict[str, float]:
    """Held-out reward and KL of the weights the run ends with, as ``final/*`` metrics.

    A round's ``eval/*`` metrics are those of the weights that sampled it: the last round's are
    one update behind the final weights, and at ``rounds.max_staleness`` k up to k + 1 behind.
    Here the samplers, which hold the final weights after the last sync, sample the same
    held-out prompts once more (seeded like the round after the last), so runs of any staleness
    are compared on what they trained.
    """
    cfg, algorithm, workers = job.cfg, job.algorithm, job.workers
    version = algorithm.sizes.rounds
    pending = start_sampling(
        workers.samplers,
        [p.text for p in job.eval_prompts],
        cfg.samplers.sampling,
        round_seed(cfg, version),
        weights_version=version,
    )
    groups = pending.get(cfg.ray.call_timeout_s)
    reference = algorithm.start_reference(workers.reference, groups)
    scored = score(groups, workers.reward, [p.given for p in job.eval_prompts])
    ref = algorithm.response_sums(scored, reference.get())
    return {**sample_metrics("final", scored, ref), "final/policy_version": version}


def check_online_config(cfg: Any, roles: list[Role]) -> None:
    """The checks every online config runs at load: what the skeleton reads of it, and the
    colocation of its ``roles`` (``rlhf.driver.setup.check_colocation``)."""
    if cfg.keep_checkpoints < 1:
        raise ConfigError(f"keep_checkpoints must be at least 1, got {cfg.keep_checkpoints}")
    staleness = cfg.rounds.max_staleness
    if staleness < 0:
        raise ConfigError(
            f"rounds.max_staleness must be >= 0 (0: synchronous rounds), got {staleness}"
        )
    if staleness and cfg.samplers.engine.sleep_when_idle:
        raise ConfigError(
            f"rounds.max_staleness is {staleness}: the samplers generate while the trainers "
            "train, but samplers.engine.sleep_when_idle puts them to sleep then; set "
            "rounds.max_staleness: 0 or samplers.engine.sleep_when_idle: false"
        )
    check_colocation(cfg, roles)


def round_prompts(
    cfg: Any, sizes: RoundSizes, model_path: str, tokenizer: Any = None
) -> tuple[PromptSource, list[Prompt]]:
    """The job's prompts (``cfg.prompts``; ``rlhf.data.prompts``): the source each round draws
    its training prompts from (a function of ``cfg.seed`` and the round: the same for a resumed
    run) and the held-out prompts sampled each round. Read before Ray starts."""
    source = job_prompts(
        cfg.prompts,
        cfg.seed,
        model_path,
        cfg.model.trust_remote_code,
        tokenizer,
        needs_held_out=True,
    )
    return source, source.held_out(sizes.eval_prompts)


@contextlib.contextmanager
def open_job(cfg: Any, algorithm: OnlineAlgorithm, resume: bool, hooks: Hooks) -> Iterator[Job]:
    """Opens the run and its Ray session, starts every actor, restores a resumed run's state;
    the actors (and a Ray this job started) end when the block does."""
    from rlhf.models.tokenizer import load_tokenizer

    check_local_device(cfg.device, cluster_address(cfg.ray))
    run_dir = open_run(cfg, resume)
    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)  # pad: EOS if none
    prompt_source, eval_prompts = round_prompts(cfg, algorithm.sizes, model_path, tokenizer)
    with contextlib.ExitStack() as stack:
        with hooks.phase("ray start"):
            scope = stack.enter_context(ray_session(cfg.ray, algorithm.roles))
        placements = place_colocated(cfg, algorithm.roles, scope)  # ray.colocate groups
        with hooks.phase("rollout actors"):
            samplers, reference, reward = start_rollout_actors(cfg, model_path, scope, placements)
            sleepers = sleeping_engines(cfg, samplers, reference)
            hooks.workers = Workers(samplers, reference, reward, sleepers)
        with hooks.phase("trainers"):
            groups = {
                name: scope.own(g)
                for name, g in algorithm.start_groups(model_path, placements).items()
            }
            hooks.workers = workers = replace(hooks.workers, groups=groups)
            rollout = {"samplers": samplers, "reference": reference_server(reference) or []}
            if isinstance(reward, ActorScorer):
                rollout["reward"] = reward.actor
            wait_for_roles(cfg, rollout | groups)  # bounded: names an actor still starting
        moved = moving_reference(reference) if algorithm.moves_reference else None
        timeout_s = cfg.ray.call_timeout_s
        if adapter_sync(cfg):  # LoRA: only the adapter travels (samplers.lora_sync: adapter)
            scope.own(AdapterSync.open(workers.policy))
        elif cfg.samplers.sync == "broadcast":
            scope.own(BroadcastSync.open(workers.policy, samplers, moved, cfg.device, timeout_s))
        checkpoints = Checkpoints(run_dir, keep=cfg.keep_checkpoints)
        restored = (
            restore_checkpoint(groups, checkpoints, algorithm.state_type, timeout_s)
            if resume
            else None
        )
        state = restored or algorithm.state_type()
        in_flight = read_in_flight(checkpoints.latest()) if restored else {}
        if state.round > 0:  # resumed: the samplers must sample from the restored policy
            sync_weights(workers.policy, samplers, moved, state.round, timeout_s)
        logger = MetricsLogger(
            run_dir,
            resume_step=state.step if resume else None,
            resume_round=state.round if resume else None,
        )
        stack.enter_context(contextlib.closing(logger))
        yield Job(
            cfg,
            algorithm,
            run_dir,
            tokenizer.pad_token_id,
            prompt_source,
            eval_prompts,
            workers,
            checkpoints,
            state,
            logger,
            hooks,
            in_flight,
            probe=job_probe(cfg),
        )
        hooks.emit("teardown", None, ended=False)  # the actors end, and a Ray this job started
    hooks.emit("teardown", None, ended=True)


def job_probe(cfg: Any) -> SyncProbe | None:
    """The job's sync probe (``samplers.sync_probe``); None when it is disabled."""
    probe = cfg.samplers.sync_probe
    if not probe.enabled:
        return None
    tolerance = probe.tolerance_for(cfg.model.dtype)
    return SyncProbe(tolerance, probe.sequences, cfg.ray.call_timeout_s)


def run_round(job: Job) -> dict[str, float]:
    """Round ``job.state.round``; returns its metrics (sample rewards, KL, the algorithm's,
    phase times).

    Generate, score and sync are repeated if a sampler or the reward actor dies (``retries``
    counts the repeats); the samplers hold weights version ``rnd.index`` during the round.
    With ``max_staleness`` k > 0 the round's samples were started by an earlier round (on the
    weights version it held), and the samplers start rounds up to ``rnd.index + k`` before
    the trainers train; the sync queues behind them. The reference, the reward and (unless
    engines must sleep to free the trainers' GPU) the trainers' forward passes before
    training work on the samples at the same time.
    """
    cfg, algorithm, workers = job.cfg, job.algorithm, job.workers
    timeout_s = cfg.ray.call_timeout_s  # every wait of the round is bounded
    rnd = Round(job, job.state.round, seed=round_seed(cfg, job.state.round))
    prompts = job.prompts(rnd.index)
    asked = prompts + job.held_out(rnd.index)  # the reward gets each as given (text or messages)
    retry = PhaseRetry(cfg.ray.phase_retries)
    samplers = named_actors("sampler", workers.samplers)
    with rnd.phase("generate"):
        groups = retry(
            "generate",
            lambda: round_samples(job, rnd),
            samplers,
            recover=lambda: sync_weights(
                workers.policy, workers.samplers, None, rnd.index, timeout_s
            ),
        )
    # The reference scores the samples while the reward does: it needs only their tokens. It
    # is asked first, so samplers that serve it answer before they sample the rounds ahead.
    reference = algorithm.start_reference(workers.reference, groups)
    start_ahead(job, rnd.index)
    with rnd.phase("score"):
        given = [p.given for p in asked]
        scored = retry(
            "score", lambda: score(groups, workers.reward, given), workers.reward_actors()
        )
    train_groups, eval_groups = scored[: len(prompts)], scored[len(prompts) :]
    if workers.sleepers:  # the engines free the GPU before the trainers compute
        with rnd.phase("reference"):
            reference.get()
    with engines_asleep(workers.sleepers, timeout_s):  # the GPU is the trainers' until the sync
        # Scored by the trainers beside the reference (unless it answered before the engines
        # slept) and the driver's batch building, before they train.
        measure = cfg.samplers.sync_probe.mismatch_kl and not algorithm.reports_mismatch_kl
        mismatch = start_mismatch_kl(workers.policy, train_groups) if measure else None
        batch, metrics = algorithm.build_batch(rnd, train_groups, eval_groups, reference)
        if mismatch is not None:
            with rnd.phase("mismatch_kl"):
                metrics["rollout/mismatch_kl"] = mismatch.get(timeout_s)
        metrics["empty_round"] = int(is_empty_round(job, rnd, batch))
        if not metrics["empty_round"]:
            with rnd.phase("train"):
                metrics.update(algorithm.train(rnd, batch))
    with rnd.phase("sync"):
        moved = moving_reference(workers.reference) if algorithm.moves_reference else None
        metrics["sync_bytes"] = retry(
            "sync",
            lambda: sync_weights(workers.policy, workers.samplers, moved, rnd.index + 1, timeout_s),
            samplers | ({"reference": moved} if moved is not None else {}),
        )
    if job.probe is not None:  # did the sync reach the engines? (rlhf.driver.sync_probe)
        with rnd.phase("sync_probe"):
            job.probe.fix(eval_groups or train_groups)
            metrics.update(job.probe.check(workers.policy, workers.samplers, rnd.index))
    metrics["retries"] = retry.count
    metrics["rollout/policy_version"] = rnd.policy_version
    metrics["rollout/policy_version_lag"] = rnd.index - rnd.policy_version
    metrics.update({f"time/{k}": v for k, v in rnd.timer.seconds.items()})
    if algorithm.finish_round is not None:
        algorithm.finish_round(rnd, batch, metrics)
    return metrics


def is_empty_round(job: Job, rnd: Round, batch: Any) -> bool:
    """Whether the round's batch holds no training data (``algorithm.units``): then a logged
    warning, or a :class:`NoTrainingDataError` when the run should stop (see the module's
    docstring); counts the empty rounds in a row in ``job.empty_rounds``."""
    if job.algorithm.units(batch) > 0:
        job.empty_rounds = 0
        return False
    job.empty_rounds += 1
    last = rnd.index == job.algorithm.sizes.rounds - 1
    hint = job.algorithm.empty_hint
    if job.empty_rounds >= MAX_EMPTY_ROUNDS:
        raise NoTrainingDataError(
            f"rounds {rnd.index - job.empty_rounds + 1} to {rnd.index} yielded no training data "
            f"({job.empty_rounds} in a row); the run stopped, as the next ones would most likely "
            f"be empty too: {hint}"
        )
    what = f"round {rnd.index} yielded no training data"
    if last and job.state.step == 0:
        raise NoTrainingDataError(
            f"{what}, and no round of the run has trained a step; the run stopped rather than "
            f"save the untrained model: {hint}"
        )
    log.warning("%s, so it trains no step: %s", what, hint)
    return True


def round_seed(cfg: Any, index: int) -> int:
    """Round ``index``'s sampling and shuffling seed."""
    return cfg.seed * 100_003 + index


def start_round_sampling(job: Job, index: int, version: int) -> PendingSamples:
    """Starts round ``index``'s samples (its training prompts, then :meth:`Job.held_out`) on the
    samplers, which hold weights ``version``."""
    asked = job.prompts(index) + job.held_out(index)
    return start_sampling(
        job.workers.samplers,
        [p.text for p in asked],
        job.cfg.samplers.sampling,
        round_seed(job.cfg, index),
        weights_version=version,
    )


def round_samples(job: Job, rnd: Round) -> list:
    """The round's completions: the ones an earlier round started, or sampled now (also when
    those failed: a retry samples again on the weights the samplers now hold)."""
    pending = job.in_flight.pop(rnd.index, None) or start_round_sampling(job, rnd.index, rnd.index)
    groups = pending.get(job.cfg.ray.call_timeout_s)
    rnd.policy_version = pending.version
    return groups


def start_ahead(job: Job, index: int) -> None:
    """Starts the rounds after ``index``, up to ``max_staleness`` of them, on the weights the
    samplers hold in round ``index`` (version ``index``): no round's samples come from weights
    more than ``max_staleness`` versions older than the round."""
    last = min(index + job.algorithm.max_staleness, job.algorithm.sizes.rounds - 1)
    for ahead in range(index + 1, last + 1):
        if ahead not in job.in_flight:
            job.in_flight[ahead] = start_round_sampling(job, ahead, version=index)


IN_FLIGHT = "in_flight.json"  # a checkpoint's samples started ahead (rounds.max_staleness)


def write_in_flight(in_flight: dict[int, PendingSamples], directory: Path) -> None:
    """Writes the samples started ahead of the checkpoint's round into ``directory``.

    They are finished (the sync queued behind them), and a resumed run takes them as they are:
    they came from weights the checkpoint no longer holds, so sampling again would draw others.
    A round whose sampler died on the way is left out: its round samples again (a retry).
    """
    rounds = []
    for index, pending in sorted(in_flight.items()):
        try:
            groups = pending.get()
        except ACTOR_FAILURES:
            continue
        rounds.append(
            {
                "round": index,
                "version": pending.version,
                "groups": [[asdict(c) for c in group] for group in groups],
            }
        )
    if rounds:
        (directory / IN_FLIGHT).write_text(json.dumps(rounds))


def read_in_flight(checkpoint: Path | None) -> dict[int, PendingSamples]:
    """The samples a checkpoint's run had started ahead, by round (none: empty)."""
    path = None if checkpoint is None else checkpoint / IN_FLIGHT
    if path is None or not path.exists():
        return {}
    return {
        r["round"]: PendingSamples.done(
            [[Completion(**c) for c in group] for group in r["groups"]], r["version"]
        )
        for r in json.loads(path.read_text())
    }


@contextlib.contextmanager
def engines_asleep(engines: list, timeout_s: float | None = None) -> Iterator[None]:
    """The engines sleep (freeing their GPU memory) in the block and are awake after it (each
    wait ``timeout_s`` at most)."""
    names = [f"sleeping engine {i}" for i in range(len(engines))]
    bounded_get([engine.sleep.remote() for engine in engines], names, timeout_s, "sleep")
    yield
    bounded_get([engine.wake_up.remote() for engine in engines], names, timeout_s, "wake up")

"""Surviving a dead actor: Ray restarts it, the driver runs the failed phase of the round again.

Samplers and the reward actor start with ``max_restarts`` (``ray.max_restarts``): when one's
process dies (the OOM killer, a lost node, a crash inside a reward model), Ray runs its
constructor again. What a constructor cannot bring back is the driver's business: a restarted
sampler holds the initial model, not the current policy. :class:`PhaseRetry` runs one phase of
a round (generate, score, sync); when an actor it uses failed, it logs which one and why, waits
until Ray has restarted it, calls ``recover`` (e.g. re-sync the policy weights) and runs the
phase again, at most ``ray.phase_retries`` times.

A phase must be safe to repeat: it writes nothing (Parquet rows, metrics) until it succeeded,
and draws its samples from seeds that depend on the round only. Errors raised by the code an
actor runs (a reward function that raises) are not retried: they would fail again.

Reused by every online loop (online DPO, PPO)::

    retry = PhaseRetry(cfg.ray.phase_retries)
    groups = retry(
        "generate",
        lambda: sample(samplers, prompts, sampling, seed, weights_version=version),
        named_actors("sampler", samplers),
        recover=lambda: sync_weights(trainers, samplers, version=version),
    )
    metrics["retries"] = retry.count
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import ray

from rlhf.models.vllm_sync import StaleWeightsError

log = logging.getLogger(__name__)

T = TypeVar("T")


class ActorLostError(RuntimeError):
    """An actor died (or became unreachable) while the driver waited for its call; the message
    names it. Raised from Ray's ``RayActorError``, whose message holds the actor's id."""


class CallTimeoutError(TimeoutError):
    """Calls of a round did not answer within their bound; the message names the actors."""


# An actor's process died or is restarting (RayActorError: ActorDiedError, ActorUnavailableError;
# ActorLostError: the same, named by bounded_get), or it came back from a restart with the initial
# weights (StaleWeightsError).
ACTOR_FAILURES = (ray.exceptions.RayActorError, ActorLostError, StaleWeightsError)


class PhaseFailedError(RuntimeError):
    """A phase still failed after its retries (or an actor is dead for good)."""


class PhaseRetry:
    """Runs phases of one round, repeating one whose actor died; counts the repeats.

    Args:
        retries: how many times one phase may be repeated (``ray.phase_retries``).
        restart_timeout_s: how long to wait for Ray to bring a dead actor back.
    """

    def __init__(self, retries: int, restart_timeout_s: float = 600.0) -> None:
        self.retries = retries
        self.restart_timeout_s = restart_timeout_s
        self.count = 0  # phases repeated so far

    def __call__(
        self,
        phase: str,
        attempt: Callable[[], T],
        actors: Mapping[str, Any],
        recover: Callable[[], object] | None = None,
    ) -> T:
        """``attempt()``'s result; repeats it after an actor failure, as the module describes.

        ``actors`` names the actor handles the phase uses ("sampler 0", "reward"): the log
        names the one that failed, and a retry waits until all of them answer again.
        """
        failures = 0
        while True:
            try:
                if failures:
                    wait_until_alive(actors, self.restart_timeout_s)
                    if recover is not None:
                        recover()
                return attempt()
            except ACTOR_FAILURES as error:
                failures += 1
                who, what = failed_actor(error, actors), describe(error)
                if failures > self.retries:
                    raise PhaseFailedError(
                        f"{phase}: {who} failed {failures} times, last with {what}. Raise "
                        f"ray.phase_retries (now {self.retries}) or ray.max_restarts, or look "
                        f"for the cause in the actor's log"
                    ) from error
                self.count += 1
                log.warning(
                    "%s: %s failed with %s; retry %d of %d once Ray has restarted it",
                    phase,
                    who,
                    what,
                    failures,
                    self.retries,
                )


def bounded_get(
    refs: Sequence[ray.ObjectRef], names: Sequence[str], timeout_s: float | None, what: str
) -> list:
    """``ray.get(refs)`` with a bound: the results, in order.

    ``names[i]`` names the actor behind ``refs[i]`` ("trainer rank 1"). Unlike a plain
    ``ray.get`` of a list, which waits for the refs in order, this stops at the first call that
    fails: a dead actor is an :class:`ActorLostError` naming it (at once, while the others may
    still wait for it in a collective); an error the call itself raised comes out unchanged.
    Calls still running after ``timeout_s`` are a :class:`CallTimeoutError` naming them (None:
    no bound, for jobs that have none to give).
    ``what`` (e.g. "train step") and the config key (``ray.call_timeout_s``) head the message.
    """
    refs = list(refs)
    if len(names) != len(refs):
        raise ValueError(f"{what}: {len(refs)} calls but {len(names)} names")
    name_of = {ref: name for ref, name in zip(refs, names, strict=True)}
    pending, start = list(refs), time.monotonic()
    while pending:
        left = None if timeout_s is None else max(timeout_s - (time.monotonic() - start), 0.0)
        ready, pending = ray.wait(pending, num_returns=1, timeout=left)
        if not ready:
            busy = ", ".join(name_of[ref] for ref in pending)
            raise CallTimeoutError(
                f"{what}: {busy} did not answer within {timeout_s:g} s (ray.call_timeout_s); "
                f"look in its log for what it waits on (a peer that died, a hung collective), "
                f"or raise ray.call_timeout_s if it is only slow"
            )
        try:
            ray.get(ready[0])
        except ray.exceptions.RayActorError as error:
            actor_id = getattr(error, "actor_id", None) or "?"
            raise ActorLostError(
                f"{what}: {name_of[ready[0]]} (actor {actor_id}) died or is unreachable: "
                f"{describe(error)}. Look for the cause in that actor's log"
            ) from error
    return ray.get(refs)


def ranks(role: str, count: int) -> list[str]:
    """``["<role> rank 0", ...]``: the names of a group's ranks in :func:`bounded_get`."""
    return [f"{role} rank {i}" for i in range(count)]


def named_actors(role: str, handles: list) -> dict[str, Any]:
    """``{"<role> 0": handle, ...}``: the names a retry logs."""
    return {f"{role} {i}": handle for i, handle in enumerate(handles)}


def wait_until_alive(actors: Mapping[str, Any], timeout_s: float) -> None:
    """Blocks until every actor answers a no-op call (a restarted one finished its constructor).

    Raises ActorDiedError for an actor Ray will not restart (its restarts are used up), and
    TimeoutError naming the actor when the restart takes longer than ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    for name, actor in actors.items():
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{name} did not come back within {timeout_s:.0f} s")
            try:
                # Every Ray actor has __ray_ready__; it runs once the constructor has returned.
                ray.get(actor.__ray_ready__.remote(), timeout=left)
                break
            except ray.exceptions.ActorUnavailableError:  # still restarting
                time.sleep(0.5)
            except ray.exceptions.GetTimeoutError:
                continue


def failed_actor(error: BaseException, actors: Mapping[str, Any]) -> str:
    """The name of the actor an error came from (Ray puts its id in every such message)."""
    text = str(error)
    for name, actor in actors.items():
        actor_id = getattr(actor, "_actor_id", None)
        if actor_id is not None and actor_id.hex() in text:
            return name
    return "an actor (" + ", ".join(actors) + ")" if actors else "an actor"


def describe(error: BaseException) -> str:
    """``Type: first line of the message`` of the error (its cause's, for a task's error)."""
    cause = error.cause if isinstance(error, ray.exceptions.RayTaskError) else error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"

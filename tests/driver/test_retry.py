"""PhaseRetry on real Ray actors whose processes are killed from outside (SIGKILL)."""

import os
import signal
import time

import pytest

pytestmark = pytest.mark.integration


# The actors below run in workers that import this module: it imports no torch (3 CPU-s
# per actor start on these machines), only the one call that raises imports the error's module.
class Engine:
    """A small actor with versioned state, checked the way a Sampler checks its weights."""

    def __init__(self) -> None:
        self.version = 0

    def load(self, version: int) -> None:
        self.version = version

    def run(self, version: int) -> int:
        if version != self.version:
            from rlhf.models.vllm_sync import StaleWeightsError

            raise StaleWeightsError(f"holds version {self.version}, expected {version}")
        return os.getpid()

    def fail(self) -> None:
        raise ValueError("a bug in the actor's own code")

    def hang(self, seconds: float) -> int:
        """A call stuck in a collective whose peer is gone, as far as the driver can tell."""
        time.sleep(seconds)
        return self.version


def _start(max_restarts):
    from actors.group import spawn

    return spawn(Engine, num_cpus=0, max_restarts=max_restarts)


def _kill(ray, actor) -> int:
    """SIGKILLs the actor's process, as the OOM killer would; returns its pid."""
    pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))
    os.kill(pid, signal.SIGKILL)
    return pid


def test_phase_is_run_again_on_the_restarted_actor_after_recover(ray_cluster, caplog):
    from rlhf.driver.retry import PhaseRetry

    actor = _start(max_restarts=1)
    ray_cluster.get(actor.load.remote(2))
    dead = _kill(ray_cluster, actor)
    retry = PhaseRetry(retries=2, restart_timeout_s=120)
    pid = retry(
        "generate",
        lambda: ray_cluster.get(actor.run.remote(2)),
        {"engine 0": actor},
        recover=lambda: ray_cluster.get(actor.load.remote(2)),
    )
    assert pid != dead and retry.count == 1
    (message,) = [r.getMessage() for r in caplog.records if r.name == "rlhf.driver.retry"]
    assert message.startswith("generate: engine 0 failed with Actor"), message
    assert "retry 1 of 2" in message
    ray_cluster.kill(actor)


def test_a_silent_restart_is_caught_by_the_version_and_recovered(ray_cluster, caplog):
    from rlhf.driver.retry import PhaseRetry, wait_until_alive

    actor = _start(max_restarts=1)
    ray_cluster.get(actor.load.remote(3))
    _kill(ray_cluster, actor)
    wait_until_alive({"engine 0": actor}, timeout_s=120)  # back, with version 0
    recovered = []
    retry = PhaseRetry(retries=1)
    retry(
        "generate",
        lambda: ray_cluster.get(actor.run.remote(3)),
        {"engine 0": actor},
        recover=lambda: recovered.append(ray_cluster.get(actor.load.remote(3))),
    )
    assert retry.count == 1 and len(recovered) == 1
    assert "engine 0 failed with StaleWeightsError: holds version 0, expected 3" in caplog.text
    ray_cluster.kill(actor)


def test_retries_are_bounded_and_the_error_names_actor_and_settings(ray_cluster):
    from rlhf.driver.retry import PhaseFailedError, PhaseRetry

    actor = _start(max_restarts=0)  # dead for good once killed
    _kill(ray_cluster, actor)
    retry = PhaseRetry(retries=2)
    with pytest.raises(PhaseFailedError, match=r"score: reward failed 3 times, last with Actor"):
        retry("score", lambda: ray_cluster.get(actor.run.remote(0)), {"reward": actor})
    assert retry.count == 2


def test_errors_raised_by_the_actors_code_are_not_retried(ray_cluster):
    from rlhf.driver.retry import PhaseRetry

    actor = _start(max_restarts=1)
    retry = PhaseRetry(retries=2)
    with pytest.raises(ValueError, match="a bug in the actor's own code"):
        retry("score", lambda: ray_cluster.get(actor.fail.remote()), {"reward": actor})
    assert retry.count == 0
    ray_cluster.kill(actor)


def test_bounded_get_names_a_dead_or_stuck_actor_within_its_bound(ray_cluster):
    """Results in order; an actor's own error as ray.get raises it; a call still running at the
    timeout named; a rank that dies mid-call named at once, though its peer still hangs."""
    from rlhf.driver.retry import ActorLostError, CallTimeoutError, bounded_get

    a, b = _start(max_restarts=0), _start(max_restarts=0)
    ray_cluster.get([a.load.remote(1), b.load.remote(2)])
    pid = ray_cluster.get(b.__ray_call__.remote(lambda self: os.getpid()))
    assert bounded_get([a.hang.remote(0), b.hang.remote(0)], ["a", "b"], 30, "step") == [1, 2]
    with pytest.raises(ValueError, match="a bug in the actor's own code"):
        bounded_get([a.fail.remote()], ["a"], 30, "score")
    start = time.monotonic()
    with pytest.raises(CallTimeoutError, match=r"^sync: b did not answer within 2 s \(ray.call"):
        bounded_get([a.hang.remote(0), b.hang.remote(60)], ["a", "b"], 2, "sync")
    assert time.monotonic() - start < 10
    refs = [a.hang.remote(60), b.hang.remote(60)]
    os.kill(pid, signal.SIGKILL)  # mid-call (b is still in the call above)
    start = time.monotonic()
    with pytest.raises(ActorLostError, match=r"^train step: rank 1 \(actor [0-9a-f]+\) died"):
        bounded_get(refs, ["rank 0", "rank 1"], 30, "train step")
    assert time.monotonic() - start < 20
    ray_cluster.kill(a)


class _Group:
    """A trainer group as the checkpoint code sees it: ``call`` starts the method on every
    rank; here each rank's call takes ``seconds`` whatever the method."""

    def __init__(self, actors, seconds: float) -> None:
        self.actors, self.seconds = actors, seconds

    def call(self, method: str, *args) -> list:
        return [actor.hang.remote(self.seconds) for actor in self.actors]


def test_a_checkpoint_a_rank_does_not_finish_is_named_and_never_becomes_the_latest(
    ray_cluster, tmp_path
):
    """save_checkpoint waits for the ranks' writes with the bound, names the rank still
    writing, and does not commit the staging dir; restoring waits the same way."""
    from dataclasses import dataclass

    from rlhf.driver.checkpoint import restore_checkpoint, save_checkpoint
    from rlhf.driver.retry import CallTimeoutError
    from rlhf.run_dir import Checkpoints

    @dataclass
    class State:
        step: int = 0

    policy, critic = _start(max_restarts=0), _start(max_restarts=0)
    ray_cluster.get([policy.load.remote(0), critic.load.remote(0)])  # both started
    checkpoints = Checkpoints(tmp_path)
    groups = {"policy": _Group([policy], 0), "critic": _Group([critic], 60)}
    start = time.monotonic()
    with pytest.raises(
        CallTimeoutError, match=r"^saving a checkpoint: critic rank 0 did not answer within 2 s"
    ):
        save_checkpoint(groups, checkpoints, State(step=4), timeout_s=2)
    assert time.monotonic() - start < 10
    assert checkpoints.latest() is None
    groups["critic"] = _Group([policy], 0)  # another actor: the first is still in its hang
    saved = save_checkpoint(groups, checkpoints, State(step=4), timeout_s=30)
    assert checkpoints.latest() == saved
    groups["policy"] = _Group([critic], 60)
    with pytest.raises(CallTimeoutError, match=r"^restoring a checkpoint: policy rank 0 did not"):
        restore_checkpoint(groups, checkpoints, State, timeout_s=2)
    assert restore_checkpoint({"policy": _Group([policy], 0)}, checkpoints, State, 30) == State(4)
    ray_cluster.kill(policy)
    ray_cluster.kill(critic)

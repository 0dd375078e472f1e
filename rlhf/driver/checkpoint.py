"""Checkpoints of a job's trainer groups, by name, with the driver's state beside them.

Every loop saves and restores the same way: each group (``trainer`` for DPO and online DPO,
``policy`` and ``critic`` for PPO) writes its DeepSpeed state into ``<checkpoint>/<name>/``
of one staging directory; the driver's state (a dataclass: step, round, ...) is written last,
and only then does the checkpoint become the latest (``rlhf.run_dir.Checkpoints``)::

    save_checkpoint({"policy": policy, "critic": critic}, checkpoints, state)
    state = restore_checkpoint(groups, checkpoints, PPOState) or PPOState()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from rlhf.driver.retry import bounded_get, ranks
from rlhf.run_dir import Checkpoints

S = TypeVar("S")


def save_checkpoint(
    groups: Mapping[str, Any],
    checkpoints: Checkpoints,
    state: Any,
    write_files: Callable[[Path], None] | None = None,
    timeout_s: float | None = None,
) -> Path:
    """Every rank of every group writes its state into a staging dir; then it becomes the latest.

    ``groups``: the trainer groups by the name their state is saved under; ``state``: the
    driver's dataclass, restored by :func:`restore_checkpoint`; ``write_files``: writes more
    of the driver's files into the staging dir (e.g. samples in flight); ``timeout_s``: how
    long the ranks' writes are waited for (None: no bound). Returns the path.
    """
    staging = checkpoints.staging_dir(state.step)
    if write_files is not None:
        write_files(staging)
    _on_every_rank(groups, "save_checkpoint", timeout_s, "saving a checkpoint", str(staging), {})
    return checkpoints.commit(staging, asdict(state))


def restore_checkpoint(
    groups: Mapping[str, Any],
    checkpoints: Checkpoints,
    state_type: type[S],
    timeout_s: float | None = None,
) -> S | None:
    """Loads the latest checkpoint into the groups and returns its driver state as a
    ``state_type``; None when the run has no checkpoint yet."""
    latest = checkpoints.latest()
    if latest is None:
        return None
    _on_every_rank(groups, "load_checkpoint", timeout_s, "restoring a checkpoint", str(latest))
    return state_type(**checkpoints.driver_state(latest))


def _on_every_rank(
    groups: Mapping[str, Any], method: str, timeout_s: float | None, what: str, path: str, *rest
) -> None:
    """``method(path, name, *rest)`` on every rank of every group, waited for with a bound."""
    refs, names = [], []
    for name, group in groups.items():
        calls = group.call(method, path, name, *rest)
        refs += calls
        names += ranks(name, len(calls))
    bounded_get(refs, names, timeout_s, what)

"""A run directory: resolved config, ``metrics.jsonl``, TensorBoard events, checkpoints.

Layout::

    <run_dir>/.rlhf-run              marks a directory this project created for a run
    <run_dir>/config.yaml            the resolved config of the run
    <run_dir>/metrics.jsonl          one JSON object per logged step: {"step": n, "train/loss": ...}
    <run_dir>/tensorboard/           the same scalars as TensorBoard events
    <run_dir>/checkpoints/step_N/    trainer state (DeepSpeed) + driver_state.json
    <run_dir>/checkpoints/latest     the name of the last complete checkpoint
    <run_dir>/model/                 the final policy in Hugging Face format

A checkpoint is written to ``step_N.tmp`` and renamed when complete; ``latest`` is replaced
atomically afterwards. A kill at any moment leaves the last good checkpoint and its pointer.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from rlhf.files import atomic_write_text

LATEST = "latest"
DRIVER_STATE = "driver_state.json"
RUN_MARKER = ".rlhf-run"  # written into every run directory; only such a directory is replaced


class RunDirectoryError(RuntimeError):
    """An output directory that a run may not use (or replace) as it is."""


def mark_run_dir(run_dir: Path) -> None:
    """Creates ``run_dir`` if needed and marks it as a run directory of this project."""
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / RUN_MARKER
    if not marker.exists():
        marker.write_text("a run directory of rlhf; `rlhf demo` may replace it\n")


def clear_for_fresh_run(run_dir: Path) -> None:
    """Removes a previous run from ``run_dir`` so that a fresh one can start there.

    Only what this project wrote is ever deleted: a directory that is missing or empty is left
    as it is, a real directory holding :data:`RUN_MARKER` is removed, and anything else (a
    file, a symbolic link, a directory without the marker, such as ``.`` or ``~``) raises
    :class:`RunDirectoryError` naming it.
    """
    if run_dir.is_symlink():
        raise RunDirectoryError(
            f"{run_dir} is a symbolic link; a fresh run does not delete through links. "
            "Remove the link yourself or set output_dir to a new directory"
        )
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise RunDirectoryError(f"output_dir {run_dir} is a file, not a directory")
    if not any(run_dir.iterdir()):
        return
    marker = run_dir / RUN_MARKER
    marked = marker.is_file() and not marker.is_symlink()
    if not marked and not _written_before_markers(run_dir):
        raise RunDirectoryError(
            f"{run_dir} is not empty and holds no run of rlhf (no {RUN_MARKER} file), so it is "
            "not deleted; set output_dir to a new or empty directory, or remove it yourself"
        )
    shutil.rmtree(run_dir)


# What a run directory holds; a directory of only these (and a metrics.jsonl) is a run written
# before runs were marked, which a fresh demo may still replace.
_RUN_ENTRIES = {
    "config.yaml",
    "config.resumed.yaml",
    "metrics.jsonl",
    "tensorboard",
    "checkpoints",
    "model",
    "rounds",
    "rounds.png",
    "logs",
}


def _written_before_markers(run_dir: Path) -> bool:
    names = {entry.name for entry in run_dir.iterdir()}
    return "metrics.jsonl" in names and names <= _RUN_ENTRIES


class MetricsLogger:
    """Appends metrics to ``metrics.jsonl`` and TensorBoard; resumable without duplicates.

    A resumed run drops the records logged after its checkpoint: those of steps after
    ``resume_step`` and, for online runs, those of rounds from ``resume_round`` on (a round
    without training steps logs at the step of the round before) and the final evaluation's
    (``final/*``), which the resumed run makes again.
    """

    def __init__(
        self, run_dir: Path, resume_step: int | None = None, resume_round: int | None = None
    ) -> None:
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step, resume_round)
        from torch.utils.tensorboard import SummaryWriter

        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)
        self._file = open(self.path, "a")  # noqa: SIM115 (kept open for the run, closed by close())

    def _truncate_after(self, step: int, round_index: int | None) -> None:
        """Drops lines logged after the checkpoint a resumed run continues from."""

        def before(record: dict[str, Any]) -> bool:
            later_round = round_index is not None and record.get("round", -1) >= round_index
            final = any(key.startswith("final/") for key in record)  # evaluated again at the end
            return record.get("step", 0) <= step and not later_round and not final

        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and before(json.loads(line))
        ]
        atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """One record per call; non-finite numbers are written as null in JSON."""
        record = {"step": step}
        for key, value in metrics.items():
            if isinstance(value, float) and not math.isfinite(value):
                record[key] = None
            else:
                record[key] = value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tensorboard.add_scalar(key, value, step)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        self.tensorboard.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Checkpoints:
    """The checkpoints of a run: where to write the next one, which is the latest good one."""

    def __init__(self, run_dir: Path, keep: int = 2) -> None:
        self.root = run_dir / "checkpoints"
        self.keep = keep

    def staging_dir(self, step: int) -> Path:
        """An empty directory to write checkpoint ``step`` into (not yet visible as complete)."""
        tmp = self.root / f"step_{step:08d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, staging: Path, driver_state: dict[str, Any]) -> Path:
        """Marks a fully written staging dir as the latest checkpoint, then prunes old ones."""
        atomic_write_text(staging / DRIVER_STATE, json.dumps(driver_state, indent=1))
        final = staging.with_name(staging.name.removesuffix(".tmp"))
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        atomic_write_text(self.root / LATEST, final.name)
        self._prune(final)
        return final

    def latest(self) -> Path | None:
        """The last complete checkpoint, or None."""
        pointer = self.root / LATEST
        if not pointer.exists():
            return None
        path = self.root / pointer.read_text().strip()
        return path if (path / DRIVER_STATE).exists() else None

    def driver_state(self, checkpoint: Path) -> dict[str, Any]:
        return json.loads((checkpoint / DRIVER_STATE).read_text())

    def _prune(self, current: Path) -> None:
        done = sorted(p for p in self.root.glob("step_*") if not p.name.endswith(".tmp"))
        for old in done[: max(0, len(done) - self.keep)]:
            if old != current:
                shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob("step_*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)

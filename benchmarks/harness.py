"""What the benchmarks share: jobs in fresh processes, phase timers, the preference data, tables.

Every measured job runs in its own Python process (``run_job``): imports, threads, Ray and
memory of one job never leak into the next, and imports stay outside the timings of both
sides. A job prints one ``RESULT {json}`` line; everything else it prints goes to a log file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULT = "RESULT "


class Phases:
    """Wall seconds per named phase: ``with phases("train"): ...`` (repeats add up).

    ``clock``: another clock, e.g. ``time.process_time`` for this process's CPU seconds.
    """

    def __init__(self, clock=time.perf_counter) -> None:
        self.seconds: dict[str, float] = {}
        self.clock = clock

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = self.clock()
        try:
            yield
        finally:
            self.add(name, self.clock() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def timed(self, name: str, fn):
        """``fn`` wrapped so that each call's wall time adds to ``name``."""

        def wrapper(*args, **kwargs):
            with self(name):
                return fn(*args, **kwargs)

        return wrapper


def run_job(script: Path, job: dict[str, Any], log: Path, timeout_s: float = 1800) -> dict:
    """Runs ``script --job JSON`` in a fresh process; returns the job's RESULT (raises on failure)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        proc = subprocess.run(
            [sys.executable, str(script), "--job", json.dumps(job)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            timeout=timeout_s,
        )
    lines = [line for line in log.read_text().splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RuntimeError(f"job {job} failed (exit {proc.returncode}); log {log}:\n{tail}")
    return json.loads(lines[-1][len(RESULT) :])


DRIVER = "driver"  # the job's own process
RAY_SYSTEM = "ray system"  # GCS, raylet, Ray's monitors and agents
RAY_IDLE = "ray idle workers"  # workers Ray started that hold no actor (yet)
OTHER = "other"
_RAY_AGENTS = frozenset({"DashboardAgent", "RuntimeEnvAgent"})  # Ray's own, titled like actors


def process_role(cmdline: str) -> str | None:
    """The role a process's command line (its arguments joined by spaces) names, or None.

    Ray titles a worker ``ray::ClassName`` while it holds an actor of that class, and
    ``ray::ClassName.method`` while the actor runs a call (``ray::function`` for a task): the
    role is ``ClassName`` (or the task's function). ``ray::IDLE``: :data:`RAY_IDLE`; Ray's own
    processes (its agents, ``gcs_server``, ``raylet``, the Python monitors under
    ``site-packages/ray/``): :data:`RAY_SYSTEM`. None: the line names no role (a subprocess of
    an actor, a compiler); :func:`tree_roles` gives it its parent's.
    """
    if cmdline.startswith("ray::"):
        name = cmdline[len("ray::") :].split(" ")[0].split(".")[0]
        if name == "IDLE":
            return RAY_IDLE
        return RAY_SYSTEM if name in _RAY_AGENTS or not name else name
    program = cmdline.split(" ", 1)[0].rsplit("/", 1)[-1]
    if program in ("gcs_server", "raylet") or "/site-packages/ray/" in cmdline:
        return RAY_SYSTEM
    return None


def tree_roles(processes: dict[int, tuple[int, str]], root: int) -> dict[int, str]:
    """Each process's role: ``processes`` maps a pid to (parent pid, command line).

    ``root`` (the job's process) is :data:`DRIVER`; a process whose command line names no role
    (:func:`process_role`) takes its parent's, and :data:`OTHER` where no ancestor in
    ``processes`` names one.
    """
    roles: dict[int, str] = {}

    def role(pid: int) -> str:
        if pid not in roles:
            parent, cmdline = processes[pid]
            named = DRIVER if pid == root else process_role(cmdline)
            roles[pid] = named or (role(parent) if parent in processes else OTHER)
        return roles[pid]

    for pid in processes:
        role(pid)
    return roles


# (pid, creation time) -> (role, CPU seconds): a process tree's CPU at one moment. The creation
# time tells a reused pid from the process it replaced.
CPUSample = dict[tuple[int, float], tuple[str, float]]


def sample_tree_cpu() -> CPUSample:
    """This process's and all its descendants' CPU seconds (user + system), by role.

    Roles from :func:`tree_roles`. A local Ray started by this process is under it: GCS,
    raylet and Ray's monitors are its children, Ray's agents and every worker (so every actor)
    the raylet's. A process that ends between the listing and the reading is left out.
    """
    import psutil

    me = psutil.Process()
    lines: dict[int, tuple[int, str]] = {}
    seconds: dict[int, tuple[float, float]] = {}  # pid -> (creation time, CPU seconds)
    for proc in [me, *me.children(recursive=True)]:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                seconds[proc.pid] = (proc.create_time(), times.user + times.system)
                lines[proc.pid] = (proc.ppid(), " ".join(proc.cmdline()).strip())
        except psutil.Error:  # ended between the listing and the reading
            pass
    roles = tree_roles(lines, me.pid)
    return {(pid, created): (roles[pid], cpu) for pid, (created, cpu) in seconds.items()}


def machine_cpu() -> tuple[float, float]:
    """The machine's CPU seconds so far, all cores: (busy, stolen).

    Busy: user, nice, system and interrupts, every process's (Linux counts guest time in user);
    stolen: time the hypervisor ran something else while this machine's cores wanted to run.
    """
    import psutil

    t = psutil.cpu_times()
    busy = t.user + t.system + getattr(t, "nice", 0.0)
    busy += getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return busy, getattr(t, "steal", 0.0)


def cpu_intervals(
    samples: list[CPUSample], machine: list[tuple[float, float]] | None = None
) -> list[dict[str, Any]]:
    """The CPU seconds spent between consecutive samples, by role; one dict per interval.

    ``{"cpu": {role: seconds}, "appeared": n, "exited": n}``; with ``machine`` (a
    :func:`machine_cpu` reading taken with each sample) also ``"others"``: the machine's busy
    seconds that were not the tree's (other jobs, the kernel), and ``"steal"``: seconds stolen
    by the hypervisor; both say whether the measurement ran alone. A process in both samples counts
    its difference, under its role in the later one (an idle Ray worker that took an actor
    counts as that actor). A process that appeared counts all its CPU seconds: the earlier
    listing saw every descendant, so it started after it (or during it, milliseconds). A
    process that exited before the later sample loses what it spent since the earlier one
    (its parent's ``children_user`` has it, once the parent waited for it): ``exited`` says
    how many did, so a reader knows whether that matters.
    """
    intervals = []
    for before, after in zip(samples, samples[1:], strict=False):
        cpu: dict[str, float] = {}
        for key, (role, seconds) in after.items():
            spent = seconds - before[key][1] if key in before else seconds
            cpu[role] = cpu.get(role, 0.0) + spent
        appeared = sum(key not in before for key in after)
        exited = sum(key not in after for key in before)
        intervals.append({"cpu": cpu, "appeared": appeared, "exited": exited})
    for interval, start, end in zip(intervals, machine or [], (machine or [])[1:], strict=False):
        interval["others"] = end[0] - start[0] - sum(interval["cpu"].values())
        interval["steal"] = end[1] - start[1]
    return intervals


def packing_bound(samples: float, core_seconds: float, cores: int) -> float:
    """Samples/s if ``core_seconds`` of CPU work per ``samples`` ran on ``cores`` cores with
    none idle: the most a job doing that work can reach there."""
    return samples * cores / core_seconds


def emit(result: dict[str, Any]) -> None:
    """Prints a job's result where ``run_job`` finds it."""
    print(RESULT + json.dumps(result), flush=True)


def make_pairs(out: Path, pairs: int, seed: int = 0) -> Path:
    """Exactly ``pairs`` preference pairs made the DPO paper's way (``rlhf make-data``).

    K = 4 SFT samples per training prompt, labelled by the task reward, all differently-scored
    pairs (about 5.9 per prompt); enough prompts are sampled, then the file is cut to ``pairs``
    rows. Reused when ``out`` already holds that many rows.
    """
    import pyarrow.parquet as pq

    from rlhf.config import from_dict
    from rlhf.driver import make_data

    if out.exists() and pq.read_metadata(out).num_rows == pairs:
        return out
    raw = out.with_name(out.stem + ".all.parquet")
    num_prompts = math.ceil(pairs / 5.0) + 8
    while True:
        cfg = from_dict(
            make_data.MakeDataConfig,
            {"output": str(raw), "num_prompts": num_prompts, "strategy": "all_pairs", "seed": seed},
        )
        table = pq.read_table(make_data.run(cfg))
        if table.num_rows >= pairs:
            break
        num_prompts = math.ceil(num_prompts * 1.25 * pairs / max(table.num_rows, 1))
    pq.write_table(table.slice(0, pairs), out)
    return out


def trl_task(model: str, num_prompts: int):
    """What a TRL online trainer needs of the embedded task: (tokenizer, prompts, reward).

    Prompts get the tokenizer's BOS written in front (TRL tokenizes prompts without special
    tokens; our samplers add BOS, which the embedded model was trained with); the reward
    function, TRL's signature, sees them without it.
    """
    from transformers import AutoTokenizer

    from rlhf.task import make_prompts, sentiment_reward

    tokenizer = AutoTokenizer.from_pretrained(model)
    bos = tokenizer.bos_token or ""
    prompts = [bos + p for p in make_prompts(num_prompts, seed=0, split="train")]

    def sentiment(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return sentiment_reward([p.removeprefix(bos) for p in prompts], completions)

    return tokenizer, prompts, sentiment


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """A plain aligned text table (floats with one decimal)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print(
        "  ".join(
            h.rjust(w) if i else h.ljust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    )
    for row in cells:
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)

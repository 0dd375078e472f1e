"""Where DeepSpeed's compiled ops live, and the build locks a killed build leaves behind.

DeepSpeed compiles some ops (its CPU Adam, its shared-memory collectives) on first use, through
``torch.utils.cpp_extension``, into ``$TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``, shared by every environment of the user). Two environments with
different torch or DeepSpeed versions would rebuild each other's ops there, and a build killed
midway leaves its ``lock`` file, which makes every later build wait for it forever. So trainer
ranks get a directory of this environment's own (:func:`extensions_dir`), and a lock that no
process holds is reported (:func:`stale_build_locks`).

Every build runs the environment's own ``ninja`` (:func:`use_environment_ninja`): ninja keeps a
hash of each command in its log, and two ninja versions hash alike commands differently, so a
process that found the system's ninja on its ``PATH`` and one that found the environment's
(an activated virtual environment, a Ray node started from it) rebuilt each other's ops, minutes
each time.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import sys
import sysconfig
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

STALE_LOCK_AGE_S = 600.0  # a build takes 1-4 minutes; an older lock nobody holds is stale
PROC_CPUINFO = Path("/proc/cpuinfo")  # what Linux says of the CPU (cpu_info_file's key)


def extensions_dir() -> str:
    """``$TORCH_EXTENSIONS_DIR`` when set; else a directory for this environment alone:
    ``<rlhf cache>/torch_extensions/<hash of interpreter prefix, torch and DeepSpeed versions>``."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return os.environ["TORCH_EXTENSIONS_DIR"]
    from rlhf.task import default_cache_dir

    versions = [sys.prefix, sys.version]
    for package in ("torch", "deepspeed"):
        try:
            versions.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} missing")
    env = hashlib.sha256("\n".join(versions).encode()).hexdigest()[:16]
    return str(Path(default_cache_dir()) / "torch_extensions" / env)


def stale_build_locks(root: str | Path, older_than_s: float = STALE_LOCK_AGE_S) -> list[Path]:
    """Build lock files under ``root`` older than ``older_than_s`` that no live process holds
    open (torch's ``FileBaton`` keeps its lock open while it builds, and names no owner in it).
    """
    root = Path(root)
    if not root.is_dir():
        return []
    now = time.time()
    locks = [*root.glob("*/lock"), *root.glob("*/*/lock")]  # <root>[/py311_cpu]/<op>/lock
    old = [lock for lock in locks if lock.is_file() and now - lock.stat().st_mtime > older_than_s]
    if not old:
        return []
    held = _open_files()
    return [lock for lock in old if str(lock.resolve()) not in held]


def _open_files() -> set[str]:
    """Every file some process of this machine that we may inspect has open."""
    held: set[str] = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                held.add(os.path.realpath(fd))
        except OSError:  # gone, or another user's
            continue
    return held


def stale_lock_message(root: str | Path) -> str | None:
    """A warning naming the stale build locks under ``root`` and what to do, or None."""
    locks = stale_build_locks(root)
    if not locks:
        return None
    now = time.time()
    ages = ", ".join(f"{lock} ({(now - lock.stat().st_mtime) / 60:.0f} min old)" for lock in locks)
    return (
        f"stale DeepSpeed op build lock(s) that no process holds: {ages}; a build killed midway "
        "left them, and every trainer start waits for them: delete them"
    )


def use_environment_ninja() -> None:
    """Puts this environment's scripts directory first on ``PATH`` when it holds ``ninja`` (pip
    installs it with DeepSpeed), so that every op build of the environment runs the same ninja
    whatever ``PATH`` the process started with."""
    scripts = sysconfig.get_path("scripts")
    path = os.environ.get("PATH", "")
    if os.access(os.path.join(scripts, "ninja"), os.X_OK) and path.split(os.pathsep)[0] != scripts:
        os.environ["PATH"] = os.pathsep.join(filter(None, [scripts, path]))


def cache_cpu_info(directory: str | Path | None = None) -> None:
    """Makes py-cpuinfo's ``get_cpu_info`` answer from memory after its first call in this
    process. DeepSpeed's op builders ask it for each op's compiler flags, four times in a CPU
    trainer rank's start, and each call runs a Python subprocess (about 1.4 s here). A process
    stays on its machine, so the answer, the flags and the ops' build hashes stay the same.

    With ``directory``, the first call reads the answer from a file there that an earlier
    process on a machine with the same CPU wrote (:func:`cpu_info_file`), or writes it: the
    subprocess spends about a second measuring the clock (a one-second sleep) and 0.6 CPU-s,
    in every trainer rank's start."""
    try:
        import cpuinfo
    except ImportError:  # DeepSpeed then reads lscpu
        return
    if hasattr(cpuinfo.get_cpu_info, "cache_info"):  # wrapped already
        return
    ask = cpuinfo.get_cpu_info
    path = cpu_info_file(directory, getattr(cpuinfo, "CPUINFO_VERSION_STRING", None))
    if path is not None:
        ask = functools.partial(_cpu_info_from_file, path, ask)
    cpuinfo.get_cpu_info = functools.cache(ask)


def cpu_info_file(directory: str | Path | None, version: str | None) -> Path | None:
    """Where py-cpuinfo ``version``'s answer for this machine's CPU is kept in ``directory``:
    a file named by a hash of the version, the architecture, the CPU count and what
    ``/proc/cpuinfo`` says of the CPU's make and instruction sets (vendor, family, model and
    stepping, flags), so a machine with another CPU, or another py-cpuinfo, reads another file.
    None without a directory, a version, or a ``/proc/cpuinfo`` that names the CPU."""
    if directory is None or version is None:
        return None
    try:
        text = PROC_CPUINFO.read_text()
    except OSError:
        return None
    keys = ("vendor_id", "cpu family", "model", "model name", "stepping", "flags")
    keys += ("CPU implementer", "CPU architecture", "CPU variant", "CPU part", "Features")
    described = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in keys:
            described.add(f"{key.strip()}: {' '.join(value.split())}")
    if not described:
        return None
    machine = [version, platform.machine(), str(os.cpu_count()), *sorted(described)]
    digest = hashlib.sha256("\n".join(machine).encode()).hexdigest()[:16]
    return Path(directory) / f"cpu_info-{digest}.json"


def _cpu_info_from_file(path: Path, ask: Callable[[], dict]) -> dict:
    """The answer kept in ``path``; else ``ask()``'s, written there (atomically) for the next
    process. An answer that is not a dict (py-cpuinfo gives ``{}`` when it fails) is not kept."""
    try:
        answer = json.loads(path.read_text())
        if isinstance(answer, dict) and answer:
            return answer
    except (OSError, ValueError):
        pass
    answer = ask()
    if isinstance(answer, dict) and answer:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(answer))
            os.replace(temporary, path)
        except OSError:  # a directory this process cannot write: asked again next time
            pass
    return answer


# The ops a CPU trainer rank compiles on first use: Adam for offloaded and for resident
# optimizer states, and the shared-memory collectives of a multi-rank group.
CPU_OPS = ("CPUAdamBuilder", "FusedAdamBuilder", "ShareMemCommBuilder")


def build_ops(names: tuple[str, ...] = CPU_OPS) -> list[str]:
    """Compiles DeepSpeed's ``names`` ops for this machine's accelerator into
    :func:`extensions_dir`, so that the first trainer start does not spend minutes on it (``make
    setup`` calls this; an op already built is only loaded). Returns the ops it loaded."""
    os.environ["TORCH_EXTENSIONS_DIR"] = extensions_dir()
    use_environment_ninja()
    cache_cpu_info(extensions_dir())  # and keeps the answer for the trainer ranks' starts
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    built = []
    for name in names:
        builder = accelerator.create_op_builder(name)
        if builder is None or not builder.is_compatible(verbose=False):
            continue  # not an op of this accelerator (e.g. the shared-memory op on CUDA)
        builder.load(verbose=False)
        built.append(name)
    return built


if __name__ == "__main__":
    start = time.time()
    ops = build_ops()
    print(
        f"DeepSpeed ops ready in {extensions_dir()}: {', '.join(ops)} ({time.time() - start:.0f} s)"
    )

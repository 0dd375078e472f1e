"""Where a job's output goes: the console for people, files in the run directory for the rest.

By default the console shows what the project itself prints: progress bars, tables, its own
warnings and errors. The rest goes to ``<run_dir>/logs/`` once a job has opened its run
directory (:func:`start_job_logs`):

    logs/driver.log             the driver's library records (Ray, transformers, torch, vLLM,
                                DeepSpeed) at WARNING and above, and Python warnings raised
                                outside this project
    logs/<Class>-<pid>.log      everything one actor process prints: vLLM's and DeepSpeed's
                                INFO records, compiler output, ``print``

Ray does not forward the actors' output to the driver then (``ray.init(log_to_driver=False)``,
see :func:`ray_init_options`). An actor's failure still reaches the console in full: ``ray.get``
raises its exception in the driver with the actor's traceback in the message.

``rlhf ... --verbose`` (:func:`configure` with ``verbose=True``) keeps everything on the console
as the libraries print it, with Ray forwarding every actor's output, and writes no log files.
A job without a run directory (``rlhf sample``, ``rlhf make-data``) keeps the console quiet
the same way; its actors' output stays in Ray's session logs (``/tmp/ray/session_latest/logs``).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOG_DIR_ENV = "RLHF_LOG_DIR"  # tells an actor process where to write its output
ACTOR_NAME_ENV = "RLHF_ACTOR_NAME"  # the actor's class: the first part of its log file's name
DRIVER_LOG = "driver.log"
# The libraries whose driver-side records go to driver.log instead of the console.
LIBRARY_LOGGERS = ("ray", "vllm", "deepspeed", "DeepSpeed", "transformers", "torch", "urllib3")
_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
_PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("rlhf", "actors")  # warnings raised in these stay on the console


@dataclass
class _State:
    """The process's logging decision and the current job's log directory."""

    verbose: bool = False
    log_dir: Path | None = None
    handler: logging.Handler | None = None
    saved: dict[str, tuple[list[logging.Handler], bool, int]] = field(default_factory=dict)
    showwarning: Any = None


_state = _State()


def configure(verbose: bool) -> None:
    """The console's mode for this process: ``verbose`` shows every library's output there."""
    _state.verbose = verbose


def is_verbose() -> bool:
    """Whether the console shows everything (``--verbose``)."""
    return _state.verbose


def run_log_dir(run_dir: Path) -> Path:
    """Where a run's log files go: ``<run_dir>/logs``."""
    return Path(run_dir) / "logs"


def start_job_logs(run_dir: Path) -> Path | None:
    """Sends the job's library records and actor output to ``<run_dir>/logs/`` (not verbose).

    Replaces the log directory of an earlier job in this process; :func:`end_job_logs` undoes
    it. Returns the log directory, or None when verbose (nothing is redirected).
    """
    end_job_logs()
    if _state.verbose:
        return None
    log_dir = run_log_dir(run_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_dir / DRIVER_LOG, encoding="utf-8")
    _state.log_dir, _state.handler = log_dir, handler
    route_library_loggers()
    _state.showwarning = warnings.showwarning
    warnings.showwarning = _show_warning
    return log_dir


def end_job_logs() -> None:
    """Gives the libraries their own handlers back and forgets the job's log directory."""
    for name, (handlers, propagate, level) in _state.saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.propagate, logger.level = propagate, level
    _state.saved.clear()
    if _state.showwarning is not None:
        warnings.showwarning = _state.showwarning
        _state.showwarning = None
    if _state.handler is not None:
        _state.handler.close()
    _state.log_dir, _state.handler = None, None


def route_library_loggers() -> None:
    """Points the library loggers of this process at the job's ``driver.log`` (WARNING and up).

    Idempotent; call it again after a library installs its own console handler (``ray.init``
    does). Does nothing without a job log directory.
    """
    if _state.handler is None:
        return
    _state.handler.setFormatter(_FORMAT)  # ray.init sets its own on the "ray" logger's handlers
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if name not in _state.saved:
            _state.saved[name] = (list(logger.handlers), logger.propagate, logger.level)
        logger.handlers[:] = [_state.handler]
        logger.propagate = False
        logger.setLevel(logging.WARNING)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning from this project goes to the console as usual; any other to driver.log."""
    where = Path(filename).resolve()
    ours = any(where.is_relative_to(_PROJECT_ROOT / package) for package in PROJECT_PACKAGES)
    if ours or _state.handler is None:
        _state.showwarning(message, category, filename, lineno, file, line)
        return
    text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
    _state.handler.emit(
        logging.makeLogRecord(
            {"name": "py.warnings", "levelname": "WARNING", "levelno": logging.WARNING, "msg": text}
        )
    )


def ray_init_options(local: bool) -> dict[str, Any]:
    """``ray.init`` arguments for the console's mode.

    Quiet: Ray does not forward the actors' output to the driver, and a local Ray runs
    :func:`redirect_actor_output` in every worker process (``worker_process_setup_hook``), which
    sends the output of the actors :func:`actor_runtime_env` marked to the job's log directory.
    A driver joining a cluster leaves the cluster's runtime environment alone: the actors'
    output stays in Ray's log files on their nodes (``ray logs``).
    """
    if _state.verbose:
        return {"log_to_driver": True}
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if local:
        options["runtime_env"] = {"worker_process_setup_hook": f"{__name__}.redirect_actor_output"}
    return options


def actor_runtime_env(actor_name: str) -> dict[str, Any]:
    """The environment variables that send an actor's output to the job's log directory.

    Empty when verbose or when no job has opened a run directory. Merged into each actor's
    ``runtime_env`` by ``actors.group``; :func:`redirect_actor_output` reads them.
    """
    if _state.log_dir is None:
        return {}
    return {LOG_DIR_ENV: str(_state.log_dir.resolve()), ACTOR_NAME_ENV: actor_name}


def redirect_actor_output() -> None:
    """In an actor's process, before the actor starts: stdout and stderr into its log file.

    Ray runs this in every worker process it starts (``worker_process_setup_hook``, see
    :func:`ray_init_options`); it does something only in an actor :func:`actor_runtime_env` marked.
    Redirects the file descriptors, so output of C extensions and subprocesses lands there too.
    A node that cannot write the directory (no shared file system) keeps Ray's own log files.
    """
    log_dir = os.environ.get(LOG_DIR_ENV)
    if not log_dir:
        return
    name = os.environ.get(ACTOR_NAME_ENV, "actor")
    try:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        fd = os.open(
            Path(log_dir) / f"{name}-{os.getpid()}.log",
            os.O_WRONLY | os.O_CREAT | os.O_APPEND,
            0o644,
        )
    except OSError:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)

"""Running ``rlhf train`` on a Ray cluster through the Jobs API (``rlhf submit / status / logs /
stop``).

A submission uploads the working directory (the project, or the user's own directory) as the
job's ``working_dir``, optionally with ``pip`` / ``py_modules`` / environment variables, and
runs ``rlhf train CONFIG overrides`` there. Inside the job, ``RAY_ADDRESS`` names the cluster
and the driver joins it (``rlhf.driver.common.cluster_address``); so does a plain
``ray job submit -- rlhf train CONFIG``.

The Jobs endpoint is the dashboard's port (8265). Ray binds it to 127.0.0.1 unless the head was
started with ``--dashboard-host``; reach a remote head through an SSH tunnel
(``ssh -L 8265:127.0.0.1:8265 head``) rather than opening the port. Clusters with Ray's token
authentication need the token on this side too: ``RAY_AUTH_TOKEN``, the file
``RAY_AUTH_TOKEN_PATH`` names, or ``~/.ray/auth_token``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rlhf.config import ConfigError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Never uploaded (on top of the directory's .gitignore, which Ray honours): environments, caches
# and run outputs are large and machine-specific.
DEFAULT_EXCLUDES = [".git", ".venv", "venv", "runs", "__pycache__", "*.egg-info", ".*_cache"]
_ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


def default_address() -> str:
    """The Jobs endpoint when ``--address`` is not given: Ray's variables, else this machine."""
    for name in _ADDRESS_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    return DEFAULT_ADDRESS


def auth_headers() -> dict[str, str]:
    """The ``Authorization`` header for clusters with Ray's token authentication, if a token is
    found where Ray looks for one (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``,
    ``~/.ray/auth_token``); empty otherwise."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        token = path.read_text().strip() if path.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextlib.contextmanager
def _explicit_address() -> Iterator[None]:
    """Ray's clients prefer ``RAY_ADDRESS`` to the address they are given; ours must not."""
    saved = {name: os.environ.pop(name) for name in _ADDRESS_VARIABLES if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str):
    """A ``JobSubmissionClient`` for the Jobs endpoint at ``address`` (``http://head:8265``)."""
    from ray.job_submission import JobSubmissionClient

    try:
        with _explicit_address():
            return JobSubmissionClient(address, headers=auth_headers())
    except ConnectionError as error:
        raise ConnectionError(
            f"cannot reach the Ray Jobs API at {address} ({error}). Is the head up with its "
            "dashboard (`ray start --head --include-dashboard=true`)? A remote head's port is "
            "best reached through a tunnel: ssh -L 8265:127.0.0.1:8265 HEAD, then "
            "--address http://127.0.0.1:8265"
        ) from None


@dataclass
class Submission:
    """What ``rlhf submit`` sends: the training command and the job's runtime environment.

    Args:
        config, overrides, resume: as for ``rlhf train``.
        working_dir: the directory uploaded as the job's working directory (default: the
            current one); the config path is given relative to it when it lies inside.
        pip: packages Ray installs into the job's environment (``pip install`` specs).
        py_modules: local packages or wheels Ray uploads and puts on the job's path.
        env_vars: environment variables of the driver and every actor.
        runtime_env: a Ray runtime environment the options above are added to.
        submission_id: the job's id (default: Ray picks ``raysubmit_...``).
    """

    config: str | None
    overrides: list[str] = field(default_factory=list)
    resume: bool = False
    working_dir: str | None = None
    pip: list[str] = field(default_factory=list)
    py_modules: list[str] = field(default_factory=list)
    env_vars: dict[str, str] = field(default_factory=dict)
    runtime_env: dict[str, Any] = field(default_factory=dict)
    submission_id: str | None = None

    def directory(self) -> Path:
        """The working directory to upload, resolved."""
        return Path(self.working_dir or self.runtime_env.get("working_dir") or ".").resolve()

    def entrypoint(self) -> str:
        """``rlhf train CONFIG overrides [--resume]``, quoted for the job's shell."""
        config = [job_config_path(self.config, self.directory())] if self.config else []
        resume = ["--resume"] if self.resume else []
        return shlex.join(["rlhf", "train", *config, *self.overrides, *resume])

    def job_runtime_env(self) -> dict[str, Any]:
        """The runtime environment of the job: ``runtime_env`` plus this submission's options."""
        env = dict(self.runtime_env)
        env["working_dir"] = str(self.directory())
        env["excludes"] = [*env.get("excludes", []), *DEFAULT_EXCLUDES]
        if self.pip:
            env["pip"] = [*env.get("pip", []), *self.pip]
        if self.py_modules:
            local = [str(Path(m).resolve()) if Path(m).exists() else m for m in self.py_modules]
            env["py_modules"] = [*env.get("py_modules", []), *local]
        if self.env_vars:
            env["env_vars"] = {**env.get("env_vars", {}), **self.env_vars}
        return env


def job_config_path(config: str, working_dir: Path) -> str:
    """The config's path as the job sees it: relative to the uploaded directory when inside it;
    otherwise as given, which the cluster must then see too (a shared filesystem)."""
    path = Path(config).resolve()
    if path.is_relative_to(working_dir):
        return path.relative_to(working_dir).as_posix()
    return str(path)


def submission_notes(submission: Submission) -> list[str]:
    """Warnings about paths that will not mean on the cluster what they mean here."""
    import yaml

    from rlhf.config import apply_overrides

    notes = []
    if submission.config:
        if not Path(submission.config).resolve().is_relative_to(submission.directory()):
            notes.append(
                f"{submission.config} is outside the uploaded directory {submission.directory()}: "
                "the job reads it at that path, so it must be on storage the cluster shares"
            )
        raw = yaml.safe_load(Path(submission.config).read_text()) or {}
    else:
        raw = {}
    output_dir = apply_overrides(raw, submission.overrides).get("output_dir")
    if output_dir is None or not Path(str(output_dir)).is_absolute():
        notes.append(
            f"output_dir {output_dir or '(the default)'} is relative: the job writes it inside its "
            "temporary copy of the working directory on the driver's node; pass "
            "output_dir=/shared/path to keep the run"
        )
    return notes


def submit(client, submission: Submission) -> str:
    """Submits the job; returns its submission id."""
    return client.submit_job(
        entrypoint=submission.entrypoint(),
        runtime_env=submission.job_runtime_env(),
        submission_id=submission.submission_id,
    )


def stream_logs(client, job_id: str, out: IO[str] = sys.stdout) -> None:
    """Writes the job's logs to ``out`` as they come, until the job ends."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())


def wait(client, job_id: str, timeout_s: float | None = None, poll_s: float = 1.0) -> str:
    """Waits until the job ends (or ``timeout_s`` passes); returns its status then."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while (status := _status(client, job_id)) not in TERMINAL:
        if deadline is not None and time.monotonic() > deadline:
            break
        time.sleep(poll_s)
    return status


def load_runtime_env(path: str | None) -> dict[str, Any]:
    """A Ray runtime environment from a YAML or JSON file (None: an empty one)."""
    if path is None:
        return {}
    import yaml

    env = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(env, dict):
        raise ConfigError(f"{path}: a runtime environment is a mapping, got {type(env).__name__}")
    return env


@dataclass(frozen=True)
class ActorPlacement:
    """Where one of a job's actors ran."""

    class_name: str
    state: str  # ALIVE, DEAD, ...
    node_id: str
    node_address: str
    node_resources: dict[str, float]  # the node's custom resources (how pinned roles find it)


def job_actors(address: str, job_id: str) -> list[ActorPlacement]:
    """The actors of a submitted job (alive or ended) and the nodes they ran on.

    Needs the job's driver to have started (before that the job has no Ray job id).
    """
    from ray.util.state.common import ListApiOptions, StateResource

    ray_job_id = connect(address).get_job_info(job_id).job_id
    if ray_job_id is None:
        return []
    options = ListApiOptions(filters=[("job_id", "=", ray_job_id)], detail=True, limit=10_000)
    actors = _state(address).list(
        StateResource.ACTORS, options=options, raise_on_missing_output=False
    )
    nodes = {node.node_id: node for node in list_nodes(address)}
    placements = []
    for actor in actors:
        node = nodes.get(actor.node_id)
        custom = {k: v for k, v in (node.resources_total if node else {}).items() if _custom(k)}
        placements.append(
            ActorPlacement(
                actor.class_name,
                actor.state,
                actor.node_id or "",
                node.node_ip if node else "?",
                custom,
            )
        )
    return sorted(placements, key=lambda p: (p.class_name, p.node_id))


def list_nodes(address: str) -> list:
    """The cluster's nodes (Ray's ``NodeState``: node_id, node_ip, state, resources_total)."""
    from ray.util.state.common import ListApiOptions, StateResource

    options = ListApiOptions(detail=True)
    return _state(address).list(StateResource.NODES, options=options, raise_on_missing_output=False)


def _state(address: str):
    from ray.util.state.api import StateApiClient

    with _explicit_address():
        return StateApiClient(address, headers=auth_headers())


def describe(client, address: str, job_id: str) -> str:
    """The job's status, message, times, entrypoint and where its actors ran, as text."""
    info = client.get_job_info(job_id)
    status = getattr(info.status, "value", info.status)
    lines = [f"job {job_id}: {status}" + (f" ({info.message})" if info.message else "")]
    lines.append(f"entrypoint: {info.entrypoint}")
    if info.start_time:
        end = info.end_time or time.time() * 1000
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.start_time / 1000))
        lines.append(
            f"started {started}, {'ran' if info.end_time else 'running for'} "
            f"{(end - info.start_time) / 1000:.0f} s"
        )
    placements = job_actors(address, job_id)
    if placements:
        lines.append("actors:")
        for p in placements:
            custom = ", ".join(f"{k}: {v:g}" for k, v in sorted(p.node_resources.items()))
            lines.append(
                f"  {p.class_name:<16} {p.state:<8} node {p.node_address} ({p.node_id[:8]})"
                + (f" [{custom}]" if custom else "")
            )
    return "\n".join(lines)


def _status(client, job_id: str) -> str:
    status = client.get_job_status(job_id)
    return str(getattr(status, "value", status))  # a str Enum: its value, not "JobStatus.X"


def _custom(key: str) -> bool:
    return key not in ("CPU", "GPU", "memory", "object_store_memory") and not key.startswith(
        ("node:", "accelerator_")
    )


def parse_env_vars(pairs: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings as a dict; a pair without ``=`` is an error naming it."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env {pair!r} is not of the form KEY=VALUE")
        env[key] = value
    return env

"""The console's two modes: quiet (library output to ``<run_dir>/logs/``) and ``--verbose``."""

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from rlhf import logs

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _fresh_state():
    """Each test starts quiet with no job, and leaves the process as it found it."""
    logs.end_job_logs()
    logs.configure(verbose=False)
    yield
    logs.end_job_logs()
    logs.configure(verbose=False)


def test_quiet_sends_library_records_to_driver_log_not_the_console(tmp_path, capsys):
    console = logging.StreamHandler(sys.stderr)  # what a library installs for itself
    ray_logger = logging.getLogger("ray")
    ray_logger.addHandler(console)
    try:
        log_dir = logs.start_job_logs(tmp_path)
        assert log_dir == tmp_path / "logs"
        logging.getLogger("ray._private.worker").warning("ray warned")
        logging.getLogger("vllm.engine").error("vllm failed")
        logging.getLogger("transformers.modeling").info("transformers chatted")
        logs.end_job_logs()
        assert console in ray_logger.handlers  # the library's handler is back
    finally:
        ray_logger.removeHandler(console)
    text = (log_dir / "driver.log").read_text()
    assert "WARNING ray._private.worker: ray warned" in text
    assert "ERROR vllm.engine: vllm failed" in text
    assert "transformers chatted" not in text  # below WARNING: dropped
    assert capsys.readouterr().err == ""


def test_warnings_from_libraries_go_to_the_file_and_ours_stay_on_the_console(tmp_path, monkeypatch):
    shown = []  # stands for the console: Python's showwarning as it was before the job
    monkeypatch.setattr(
        warnings, "showwarning", lambda message, *args, **kwargs: shown.append(str(message))
    )
    log_dir = logs.start_job_logs(tmp_path)
    library = str(REPO / ".venv" / "lib" / "site-packages" / "ray" / "worker.py")
    ours = str(REPO / "rlhf" / "data" / "cache.py")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn_explicit("a library deprecation", FutureWarning, library, 7)
        warnings.warn_explicit("ignoring cache file x", UserWarning, ours, 9)
    logs.end_job_logs()
    assert shown == ["ignoring cache file x"]
    assert "FutureWarning: a library deprecation" in (log_dir / "driver.log").read_text()


def test_actors_write_to_the_job_log_dir_only_while_a_quiet_job_runs(tmp_path):
    assert logs.actor_runtime_env("Sampler") == {}  # no job yet: Ray's own logs
    logs.start_job_logs(tmp_path)
    assert logs.actor_runtime_env("Sampler") == {
        logs.LOG_DIR_ENV: str((tmp_path / "logs").resolve()),
        logs.ACTOR_NAME_ENV: "Sampler",
    }
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    hook = {"worker_process_setup_hook": "rlhf.logs.redirect_actor_output"}
    assert logs.ray_init_options(local=True) == {**quiet, "runtime_env": hook}
    assert logs.ray_init_options(local=False) == quiet  # a cluster's runtime env is its own
    logs.end_job_logs()
    assert logs.actor_runtime_env("Sampler") == {}


def test_verbose_keeps_everything_on_the_console(tmp_path, capsys):
    console = logging.StreamHandler(sys.stderr)
    vllm_logger = logging.getLogger("vllm")
    vllm_logger.addHandler(console)
    try:
        logs.configure(verbose=True)
        assert logs.start_job_logs(tmp_path) is None
        logging.getLogger("vllm.engine").warning("vllm warned")
        logs.route_library_loggers()  # as ray_session calls it: nothing to route
        assert vllm_logger.handlers == [console]
    finally:
        vllm_logger.removeHandler(console)
    assert "vllm warned" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()
    assert logs.actor_runtime_env("Sampler") == {}
    assert logs.ray_init_options(local=True) == {"log_to_driver": True}


def test_an_actor_process_writes_prints_and_subprocess_output_to_its_file(tmp_path):
    code = (
        "import os, sys; from rlhf.logs import redirect_actor_output; redirect_actor_output(); "
        "print('printed'); sys.stderr.write('to stderr\\n'); sys.stdout.flush(); "
        "os.system('echo from a child process')"
    )
    env = {**os.environ, logs.LOG_DIR_ENV: str(tmp_path / "logs"), logs.ACTOR_NAME_ENV: "Echo"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    (log_file,) = (tmp_path / "logs").iterdir()
    assert log_file.name.startswith("Echo-") and log_file.suffix == ".log"
    assert log_file.read_text().splitlines() == ["printed", "to stderr", "from a child process"]


class _Chatty:
    """An actor that prints, logs like a library, and fails on request."""

    def __init__(self) -> None:
        print("chatty started", flush=True)
        logging.getLogger("vllm.engine").warning("engine warming up")

    def fail(self) -> None:
        raise ValueError("the chatty actor broke")


@pytest.mark.integration
def test_a_jobs_actors_write_to_its_log_dir_and_their_errors_still_reach_the_driver(
    ray_cluster, tmp_path
):
    from actors.group import spawn

    logs.start_job_logs(tmp_path)
    actor = spawn(_Chatty, num_cpus=0)
    with pytest.raises(ray_cluster.exceptions.RayTaskError) as error:
        ray_cluster.get(actor.fail.remote())
    ray_cluster.kill(actor)
    logs.end_job_logs()
    # The actor's traceback comes with the error: the failing line, the exception.
    assert 'test_logs.py", line' in str(error.value) and "in fail" in str(error.value)
    assert "ValueError: the chatty actor broke" in str(error.value)
    (log_file,) = (tmp_path / "logs").glob("_Chatty-*.log")
    text = log_file.read_text()
    assert "chatty started" in text and "engine warming up" in text

"""DeepSpeed's op cache of this environment, and build locks a killed build left behind."""

import os
import sys
import time
import types

from rlhf.models.torch_extensions import (
    cache_cpu_info,
    extensions_dir,
    stale_build_locks,
    stale_lock_message,
    use_environment_ninja,
)


def test_extensions_dir_is_this_environments_own(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path))
    ours = extensions_dir()
    assert ours.startswith(str(tmp_path / "torch_extensions") + os.sep)
    assert ours == extensions_dir()  # the same in the driver and in every rank
    monkeypatch.setattr("sys.prefix", "/some/other/venv")
    assert extensions_dir() != ours  # another environment, another directory
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/mine")
    assert extensions_dir() == "/mine"  # the user's choice wins


def _lock(root, op: str, age_s: float):
    lock = root / "py311_cpu" / op / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    then = time.time() - age_s
    os.utime(lock, (then, then))
    return lock


def test_only_old_locks_that_no_process_holds_are_stale(tmp_path):
    killed = _lock(tmp_path, "cpu_adam", age_s=3600)
    building = _lock(tmp_path, "fused_adam", age_s=3600)
    _lock(tmp_path, "shm_comm", age_s=5)  # a build that just started
    fd = os.open(building, os.O_RDONLY)  # held, as torch's FileBaton holds its lock
    try:
        assert stale_build_locks(tmp_path) == [killed]
        message = stale_lock_message(tmp_path)
        assert message.startswith(
            f"stale DeepSpeed op build lock(s) that no process holds: {killed} (60 min old)"
        )
        assert message.endswith("delete them")
    finally:
        os.close(fd)
    assert stale_build_locks(tmp_path / "none") == []
    assert stale_lock_message(tmp_path / "none") is None


def test_op_builds_run_this_environments_ninja(monkeypatch, tmp_path):
    """Two ninja versions rebuild each other's ops (their logs hash commands differently), so
    every build runs the environment's own, whatever PATH the process started with."""
    scripts = tmp_path / "venv" / "bin"
    scripts.mkdir(parents=True)
    monkeypatch.setattr("sysconfig.get_path", lambda name: str(scripts))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    use_environment_ninja()
    assert os.environ["PATH"] == "/usr/bin:/bin"  # no ninja of its own: PATH as it was
    (scripts / "ninja").write_text("")
    (scripts / "ninja").chmod(0o755)
    use_environment_ninja()
    use_environment_ninja()
    assert os.environ["PATH"] == f"{scripts}:/usr/bin:/bin"  # first, and once


def test_cpu_info_is_asked_once_per_process(monkeypatch):
    """DeepSpeed's builders import get_cpu_info from the module at each call: after
    cache_cpu_info they get the first answer again, without another subprocess."""
    calls = []
    fake = types.ModuleType("cpuinfo")
    fake.get_cpu_info = lambda: calls.append(1) or {"arch": "X86_64", "flags": ["avx2"]}
    monkeypatch.setitem(sys.modules, "cpuinfo", fake)
    cache_cpu_info()
    cache_cpu_info()  # wraps once
    from cpuinfo import get_cpu_info

    assert get_cpu_info() == {"arch": "X86_64", "flags": ["avx2"]}
    assert get_cpu_info()["flags"] == ["avx2"]
    assert len(calls) == 1

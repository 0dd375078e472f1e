"""The py-cpuinfo answer kept on disk for later trainer ranks (rlhf.models.torch_extensions)."""

import json
import sys
import types

from rlhf.models import torch_extensions
from rlhf.models.torch_extensions import cache_cpu_info, cpu_info_file

CPU = """processor\t: {n}
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
stepping\t: 1
cpu MHz\t\t: {mhz}
bogomips\t: 4890.81
flags\t\t: fpu sse2 {extra}avx2
"""


def _machine(tmp_path, monkeypatch, text):
    proc = tmp_path / "cpuinfo"
    proc.write_text(text)
    monkeypatch.setattr(torch_extensions, "PROC_CPUINFO", proc)


def test_the_file_is_named_by_the_cpu_and_the_version(tmp_path, monkeypatch):
    """Clock speeds and processor numbers do not change the file; the flags and the py-cpuinfo
    version do; without a directory, a version or a CPU description there is none."""
    two_cores = CPU.format(n=0, mhz="2445.406", extra="") + CPU.format(n=1, mhz="2401.2", extra="")
    _machine(tmp_path, monkeypatch, two_cores)
    path = cpu_info_file(tmp_path / "ops", "9.0.0")
    assert path.parent == tmp_path / "ops" and path.name.startswith("cpu_info-")
    _machine(tmp_path, monkeypatch, CPU.format(n=0, mhz="1800.0", extra=""))
    assert cpu_info_file(tmp_path / "ops", "9.0.0") == path
    assert cpu_info_file(tmp_path / "ops", "9.0.1") != path
    _machine(tmp_path, monkeypatch, CPU.format(n=0, mhz="1800.0", extra="avx512f "))
    assert cpu_info_file(tmp_path / "ops", "9.0.0") != path
    assert cpu_info_file(None, "9.0.0") is None
    assert cpu_info_file(tmp_path / "ops", None) is None
    _machine(tmp_path, monkeypatch, "processor\t: 0\ncpu MHz\t\t: 1800.0\n")
    assert cpu_info_file(tmp_path / "ops", "9.0.0") is None


def _fresh_cpuinfo(monkeypatch, answer, calls):
    """A stand-in py-cpuinfo module, as a new process would import it."""
    fake = types.ModuleType("cpuinfo")
    fake.CPUINFO_VERSION_STRING = "9.0.0"
    fake.get_cpu_info = lambda: calls.append(1) or answer
    monkeypatch.setitem(sys.modules, "cpuinfo", fake)
    return fake


def test_a_later_process_reads_the_first_ones_answer(tmp_path, monkeypatch):
    _machine(tmp_path, monkeypatch, CPU.format(n=0, mhz="2445.406", extra=""))
    answer = {"arch": "X86_64", "flags": ["avx2", "fpu", "sse2"], "count": 2}
    calls = []
    first = _fresh_cpuinfo(monkeypatch, answer, calls)
    cache_cpu_info(tmp_path)
    assert first.get_cpu_info() == answer and first.get_cpu_info() == answer
    assert len(calls) == 1  # asked once in this process
    assert json.loads(cpu_info_file(tmp_path, "9.0.0").read_text()) == answer
    later = _fresh_cpuinfo(monkeypatch, {"arch": "other"}, calls)
    cache_cpu_info(tmp_path)
    assert later.get_cpu_info() == answer
    assert len(calls) == 1  # the file answered: no subprocess


def test_a_failed_answer_is_not_kept(tmp_path, monkeypatch):
    """py-cpuinfo answers {} when its subprocess fails: the next process asks again."""
    _machine(tmp_path, monkeypatch, CPU.format(n=0, mhz="2445.406", extra=""))
    calls = []
    first = _fresh_cpuinfo(monkeypatch, {}, calls)
    cache_cpu_info(tmp_path)
    assert first.get_cpu_info() == {}
    assert not cpu_info_file(tmp_path, "9.0.0").exists()
    later = _fresh_cpuinfo(monkeypatch, {"arch": "X86_64", "flags": []}, calls)
    cache_cpu_info(tmp_path)
    assert later.get_cpu_info() == {"arch": "X86_64", "flags": []}
    assert len(calls) == 2

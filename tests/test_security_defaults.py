"""Security defaults, checked over the source: no pickle from files, no remote code unless the
config asks for it, no dashboard that listens beyond this machine by default."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    p
    for folder in ("rlhf", "actors", "examples", "benchmarks")
    for p in (REPO / folder).rglob("*.py")
)
PICKLE_MODULES = {"pickle", "cPickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"}


def _calls(path: Path) -> Iterator[tuple[ast.Call, str]]:
    """Every call in the file with its dotted callee (``torch.load``, ``x.from_pretrained``)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO)}:{node.lineno}"


def test_the_audit_sees_the_source():
    assert len(SOURCES) > 30 and REPO / "rlhf" / "models" / "hf.py" in SOURCES


def test_no_torch_load_without_weights_only_true():
    bad = [
        _where(path, call)
        for path in SOURCES
        for call, name in _calls(path)
        if name.endswith("torch.load")
        and not (
            isinstance(value := _keyword(call, "weights_only"), ast.Constant)
            and value.value is True
        )
    ]
    assert bad == [], f"torch.load unpickles arbitrary objects; pass weights_only=True: {bad}"


def test_no_pickle_modules_and_no_unsafe_yaml():
    bad = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            bad += [f"{_where(path, node)} imports {n}" for n in names if n in PICKLE_MODULES]
        for call, name in _calls(path):
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
                bad.append(f"{_where(path, call)} calls {name}")
    assert bad == [], bad


def test_remote_code_only_when_a_setting_turns_it_on():
    """Every model / tokenizer / engine load either leaves trust_remote_code at its default
    (off) or passes a setting through; none hard-codes it on."""
    loads = 0
    bad = []
    for path in SOURCES:
        for call, name in _calls(path):
            if not (name.endswith(".from_pretrained") or name == "LLM"):
                continue
            loads += 1
            value = _keyword(call, "trust_remote_code")
            if isinstance(value, ast.Constant) and value.value is not False:
                bad.append(f"{_where(path, call)}: {name}(trust_remote_code={value.value!r})")
            hidden = any(k.arg is None for k in call.keywords)  # **kwargs, unless passed too
            if hidden and value is None and name != "LLM":
                bad.append(f"{_where(path, call)}: {name}(**...) hides trust_remote_code")
    assert loads >= 8 and bad == [], bad


def test_remote_code_settings_default_off_and_presets_leave_them_off():
    from rlhf.models.deepspeed_config import ModelLoad
    from rlhf.models.vllm_engine import EngineSettings
    from rlhf.rewards import RewardConfig
    from rlhf.schema import ModelConfig

    assert ModelConfig().trust_remote_code is False
    assert ModelLoad().trust_remote_code is False  # the trainers' (from model.trust_remote_code)
    assert RewardConfig().trust_remote_code is False
    assert EngineSettings(model="m").trust_remote_code is False

    def keys(tree) -> Iterator[str]:
        if isinstance(tree, dict):
            for key, value in tree.items():
                if value is True:
                    yield key
                yield from keys(value)

    for preset in sorted((REPO / "configs").glob("*.yaml")):
        assert "trust_remote_code" not in set(keys(yaml.safe_load(preset.read_text()))), preset


def test_local_ray_starts_without_a_dashboard_and_any_dashboard_binds_localhost():
    inits = 0
    bad = []
    for path in SOURCES:
        for call, name in _calls(path):
            if name != "ray.init":
                continue
            inits += 1
            host = _keyword(call, "dashboard_host")
            if isinstance(host, ast.Constant) and host.value not in ("127.0.0.1", "localhost"):
                bad.append(f"{_where(path, call)}: dashboard_host={host.value!r}")
            address = _keyword(call, "address")
            starts_local = isinstance(address, ast.Constant) and address.value == "local"
            dashboard = _keyword(call, "include_dashboard")
            off = isinstance(dashboard, ast.Constant) and dashboard.value is False
            if starts_local and not off and host is None:
                bad.append(f"{_where(path, call)}: a local Ray with a dashboard on Ray's default")
    assert inits >= 1 and bad == [], bad


@pytest.mark.parametrize("path", ["examples/slurm/rlhf.sbatch"])
def test_cluster_example_binds_the_jobs_api_to_localhost(path):
    text = (REPO / path).read_text()
    assert "--dashboard-host=127.0.0.1" in text and "0.0.0.0" not in text

"""The config machinery: types checked, wrong keys named with their path and file, overrides."""

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pytest

from rlhf.config import ConfigError, apply_overrides, from_dict, load_config, to_dict


@dataclass
class Inner:
    lr: float = 1e-3
    kind: Literal["a", "b"] = "a"
    tags: list[str] = field(default_factory=list)
    limit: int | None = None

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError("lr must be positive")


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)


def test_defaults_and_conversion():
    cfg = from_dict(Outer, {"inner": {"lr": 1, "tags": ["p"], "limit": 3}})
    assert cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.tags == ["p"] and cfg.inner.limit == 3 and cfg.name == "x"


def test_unknown_key_names_path_and_valid_keys():
    with pytest.raises(
        ConfigError, match=r"unknown key inner\.lrr; valid keys of inner: kind, limit, lr, tags"
    ):
        from_dict(Outer, {"inner": {"lrr": 1}})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"inner": {"lr": "fast"}}, r"inner\.lr: expected a number, got str 'fast'"),
        ({"inner": {"kind": "c"}}, r"inner\.kind: 'c' is not one of 'a', 'b'"),
        ({"inner": {"limit": 1.5}}, r"inner\.limit: expected an integer"),
        ({"inner": {"tags": "p"}}, r"inner\.tags: expected a list"),
        ({"inner": 3}, r"inner: expected a section"),
        ({"inner": {"lr": -1}}, r"inner: lr must be positive"),
        ({"name": True}, r"name: expected a string"),
    ],
)
def test_type_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_overrides_are_yaml_typed_and_nested():
    data = apply_overrides({"inner": {"lr": 0.1}}, ["inner.lr=2e-5", "inner.tags=[a, b]", "name=y"])
    cfg = from_dict(Outer, data)
    assert cfg.inner.lr == 2e-5 and cfg.inner.tags == ["a", "b"] and cfg.name == "y"
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])
    with pytest.raises(ConfigError, match="not of the form"):
        apply_overrides({}, ["novalue"])


def test_load_config_names_the_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("inner:\n  lr: 0.5\n  bogus: 1\n")
    with pytest.raises(ConfigError, match=rf"{path}: unknown key inner\.bogus"):
        load_config(Outer, path)
    path.write_text("inner:\n  lr: 0.5\n")
    cfg = load_config(Outer, path, ["inner.kind=b"])
    assert to_dict(cfg) == {
        "name": "x",
        "inner": {"lr": 0.5, "kind": "b", "tags": [], "limit": None},
    }
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "name, module, cls",
    [
        ("sample.yaml", "rlhf.driver.sample", "SampleJobConfig"),
        ("make_data.yaml", "rlhf.driver.make_data", "MakeDataConfig"),
        ("dpo.yaml", "rlhf.driver.dpo", "DPOConfig"),
        ("online_dpo.yaml", "rlhf.driver.online_dpo", "OnlineDPOConfig"),
        ("demo.yaml", "rlhf.driver.online_dpo", "OnlineDPOConfig"),
    ],
)
def test_shipped_configs_load(name, module, cls):
    import importlib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "configs"
    assert load_config(getattr(importlib.import_module(module), cls), root / name)
    first_line = (root / name).read_text().splitlines()[0]
    assert first_line.startswith("# rlhf "), "each config starts with the command that runs it"


@dataclass
class Checked:
    path: str = ""
    ratio: float = 0.5

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("path is required")


@dataclass
class Job:
    REMOVED_KEYS: ClassVar[dict[str, str]] = {"old_seed": "set seed instead"}

    seed: int = 0
    inner: Inner = field(default_factory=Inner)
    checked: Checked = field(default_factory=lambda: Checked(path="given"))
    options: dict[str, Any] = field(default_factory=dict)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"inner": {"lr": float("nan")}}, r"^inner\.lr: must be a finite number, got nan$"),
        ({"inner": {"lr": float("inf")}}, r"^inner\.lr: must be a finite number, got inf$"),
        ({"inner": {"lr": "-inf"}}, r"^inner\.lr: must be a finite number, got -inf$"),
        ({"checked": {"path": "p", "ratio": "nan"}}, r"^checked\.ratio: must be a finite"),
        ({"options": {"a": {"b": [1.0, float("nan")]}}}, r"^options\.a\.b\[1\]: NaN is not"),
        ({"old_seed": 3}, r"^old_seed is no longer a key: set seed instead$"),
        ({"checked": {"ratio": 0.1}}, r"^checked: path is required$"),
    ],
)
def test_non_finite_numbers_and_removed_keys_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Job, data)


def test_yaml_nan_and_inf_overrides_are_refused(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("inner:\n  lr: .nan\n")
    with pytest.raises(ConfigError, match=rf"{path}: inner\.lr: must be a finite number"):
        load_config(Job, path)
    with pytest.raises(ConfigError, match=r"inner\.lr: must be a finite number, got inf"):
        load_config(Job, None, ["inner.lr=.inf"])


def test_sections_left_at_their_defaults_are_validated_too():
    @dataclass
    class Needy:
        checked: Checked = field(default_factory=Checked)  # its default has no path

    with pytest.raises(ConfigError, match=r"^checked: path is required$"):
        from_dict(Needy, {})

    @dataclass
    class BadDefault:
        inner: Inner = field(default_factory=lambda: Inner(lr=float("nan")))

    with pytest.raises(ConfigError, match=r"^inner\.lr: must be a finite number"):
        from_dict(BadDefault, {})
    assert from_dict(Job, {}).checked.path == "given"


def test_every_float_of_every_shipped_job_is_checked_at_load():
    """A NaN anywhere in a job's config is refused at load: each float field, found by walking
    the config classes (sections left at their defaults included)."""
    from rlhf.driver.dpo import DPOConfig
    from rlhf.driver.make_data import MakeDataConfig
    from rlhf.driver.online_dpo import OnlineDPOConfig
    from rlhf.driver.ppo import PPOConfig
    from rlhf.driver.sample import SampleJobConfig

    data = {"data": {"path": "a.jsonl"}}
    checked = 0
    for cls in (DPOConfig, OnlineDPOConfig, PPOConfig, SampleJobConfig, MakeDataConfig):
        for key in _float_keys(cls):
            base = data if cls is DPOConfig else {}
            with pytest.raises(ConfigError, match=rf"^defaults: {re.escape(key)}: must be"):
                load_config(cls, None, [f"{k}={v}" for k, v in _flat(base)] + [f"{key}=.nan"])
            checked += 1
    assert checked > 40  # trainer, engines, sampling, loss, ppo, reward, ... floats


def _float_keys(cls, prefix: str = "") -> list[str]:
    """Dotted keys of the float settings of a config class tree: ``float`` and ``float | None``
    fields, and an entry of each ``dict[str, float]`` (custom resources)."""
    import dataclasses
    import types
    from typing import get_args, get_origin, get_type_hints

    keys = []
    for f in dataclasses.fields(cls):
        tp = get_type_hints(cls)[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            keys += _float_keys(tp, f"{key}.")
        elif tp is float or (get_origin(tp) is types.UnionType and float in get_args(tp)):
            keys.append(key)
        elif get_origin(tp) is dict and get_args(tp)[1] is float:
            keys.append(f"{key}.node_b")
    return keys


def _flat(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_keep_checkpoints_is_a_top_level_key_of_offline_dpo_too():
    from rlhf.driver.dpo import DPOConfig

    data = {"data": {"path": "prefs.parquet"}}
    assert from_dict(DPOConfig, {**data, "keep_checkpoints": 3}).keep_checkpoints == 3
    with pytest.raises(ConfigError, match="schedule.keep_checkpoints is no longer a key"):
        from_dict(DPOConfig, {**data, "schedule": {"keep_checkpoints": 3}})
    with pytest.raises(ConfigError, match="keep_checkpoints must be at least 1, got 0"):
        from_dict(DPOConfig, {**data, "keep_checkpoints": 0})


def test_min_tokens_lies_between_zero_and_max_tokens_and_names_its_section():
    from rlhf.driver import online_dpo

    def load(*overrides):
        return load_config(online_dpo.OnlineDPOConfig, "configs/online_dpo.yaml", list(overrides))

    assert load("samplers.sampling.min_tokens=48").samplers.sampling.min_tokens == 48
    assert load().samplers.sampling.min_tokens == 0  # responses end where the policy ends them
    with pytest.raises(
        ConfigError,
        match=r"samplers\.sampling: min_tokens must be between 0 and "
        r"max_tokens \(48\), got 49",
    ):
        load("samplers.sampling.min_tokens=49")
    with pytest.raises(ConfigError, match="got -1"):
        load("samplers.sampling.min_tokens=-1")

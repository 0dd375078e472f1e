"""The config machinery: types checked, wrong keys named with their path and file, overrides."""

from dataclasses import dataclass, field
from typing import Literal

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

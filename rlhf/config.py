"""Typed configuration: dataclasses that validate themselves, YAML presets, dotted overrides.

One source of truth for every setting: a job's settings are a tree of dataclasses, a YAML file in
``configs/`` fills some of them, and ``key.sub=value`` arguments on the command line override
the rest. A wrong key or a wrong type is an error that names its dotted path (and the file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value that does not fit its schema; the message names where."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_no_nan(value: Any, where: str) -> None:
    """NaN is no setting anywhere, not even in a free-form mapping such as ``loss.options``."""
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(f"{where}: NaN is not a setting; give a number")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_no_nan(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_no_nan(item, f"{where}[{i}]")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Checks ``value`` against the annotation ``tp`` and converts what is safe to convert."""
    origin = get_origin(tp)
    if tp is Any:
        _check_no_nan(value, where)
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{where}: null is not allowed (expected {_type_name(tp)})")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(
            errors[0]
            if len(errors) == 1
            else f"{where}: {value!r} fits no option of {_type_name(tp)}"
        )
    if origin is typing.Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        _, value_tp = get_args(tp) or (str, Any)
        return {k: _convert(v, value_tp, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a section (mapping), got {value!r}")
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "2e-5" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return _finite(float(value), where)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def _finite(value: float, where: str) -> float:
    if not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value}")
    return value


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Builds the dataclass ``cls`` from a mapping, checking every key and type.

    Unknown keys are errors that list the valid ones; a key the class lists in its
    ``REMOVED_KEYS`` (``{old key: what to set instead}``) is an error that says what replaced
    it. Every float must be finite. Each section's ``validate()`` (if any) runs after
    construction, so cross-field rules live beside the fields they concern; sections the data
    leaves at their defaults are validated too.
    """
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    removed = getattr(cls, "REMOVED_KEYS", {})
    for key in unknown:
        if key in removed:
            raise ConfigError(f"{_join(where, key)} is no longer a key: {removed[key]}")
    if unknown:
        raise ConfigError(
            f"unknown key {_join(where, str(unknown[0]))}; valid keys of {where or 'the config'}: "
            + ", ".join(sorted(fields))
        )
    kwargs = {
        name: _convert(value, hints[name], _join(where, name)) for name, value in data.items()
    }
    obj = cls(**kwargs)
    for name in fields.keys() - data.keys():
        check_defaults(getattr(obj, name), _join(where, name))
    _validate(obj, where)
    return obj


def check_defaults(value: Any, where: str) -> None:
    """The checks ``from_dict`` runs on what it reads, for a value left at its default: floats
    finite, and a section's ``validate()`` (with those of its own sections)."""
    if isinstance(value, float):
        _finite(value, where)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_defaults(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_defaults(item, f"{where}.{key}")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            check_defaults(getattr(value, f.name), _join(where, f.name))
        _validate(value, where)


def _validate(obj: Any, where: str) -> None:
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}" if where else str(error)) from None


def to_dict(obj: Any) -> Any:
    """The plain-data form of a config (for YAML dumps and run directories)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """Splits ``"a.b.c=value"`` into its key path and a YAML-typed value."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(
            f"override {text!r}: the value is not valid YAML ({_yaml_problem(error)}); "
            "quote it to pass a string"
        ) from None
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Returns a copy of ``data`` with each ``key.sub=value`` override set (sections created)."""
    result = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for depth, key in enumerate(path[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"override {text!r}: {'.'.join(path[: depth + 1])} is a value, not a section"
                )
            node = child
        node[path[-1]] = value
    return result


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config file holds (empty for an empty file); a :class:`ConfigError`
    naming the file (and line) when it is missing, not YAML, or not a mapping."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; give a YAML file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {_yaml_problem(error)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections (key: value), "
            f"not a {type(data).__name__}"
        )
    return data


def _yaml_problem(error: yaml.YAMLError) -> str:
    """The one-line gist of a YAML error (its ``problem``, else its first line)."""
    problem = getattr(error, "problem", None)
    context = getattr(error, "context", None)
    if problem:
        return f"{context}, {problem}" if context else problem
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] = ()) -> T:
    """Loads ``cls`` from a YAML file (or defaults when ``path`` is None) plus overrides.

    Errors name the file as well as the dotted key.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        data = read_config_file(path)
    try:
        return from_dict(cls, apply_overrides(data, list(overrides)))
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def dump_config(obj: Any, path: str | Path) -> None:
    """Writes the resolved config as YAML (what a run directory keeps)."""
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))

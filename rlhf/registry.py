"""Registries: named functions of one kind with one fixed signature, and the plugins that add
to them through entry points.

A registry maps a name (what a config writes) to a function with the registry's signature, plus
metadata a caller reads instead of branching on the name. The framework's registries are built
from :class:`Registry`: the algorithm library's (``rlhf.algorithms.registry``: preference
losses, advantage estimators), pair strategies, reward functions and judges, training loops
(``rlhf.plugins`` lists them all).

A config may also name a function by import path, ``"package.module:attr"``, for quick
experiments; its signature is checked the same way.

Other packages register theirs through the entry-point group ``rlhf.algorithms``: each entry
point names a module (or an object in one) whose import runs its ``@register_...`` decorators.
Entry points are imported lazily, once, the first time any registry is queried.

This module imports the standard library only, so a registry costs nothing to import: a reward
actor, whose registries are the reward functions', does not import torch for them.
"""

from __future__ import annotations

import contextvars
import importlib
import importlib.metadata
import inspect
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

ENTRY_POINT_GROUP = "rlhf.algorithms"


class UnknownNameError(KeyError):
    """A registry lookup by an unknown name (a KeyError whose message reads cleanly)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PluginLoadError(ImportError):
    """An ``rlhf.algorithms`` entry point failed to import (its error is chained)."""


@dataclass(frozen=True, eq=False)
class Entry:
    """One registered function: calling the entry calls the function.

    Metadata keys read as attributes too: ``entry.needs_critic`` is
    ``entry.metadata["needs_critic"]``.
    """

    name: str
    fn: Callable[..., Any]
    metadata: Mapping[str, Any]
    module: str  # module that defined the function
    qualname: str
    distribution: str | None = None  # installed distribution, if it came through an entry point

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (e.g. sent to a Ray actor)
        fields = (self.name, self.fn, dict(self.metadata), self.module, self.qualname)
        return (type(self), (*fields, self.distribution))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __getattr__(self, key: str) -> Any:
        # Only called for names that are not fields. Read __dict__ directly so that copy/pickle,
        # which probe attributes before the fields exist, do not recurse.
        metadata = self.__dict__.get("metadata", {})
        if key in metadata:
            return metadata[key]
        raise AttributeError(
            f"registry entry {self.__dict__.get('name')!r} has no field or metadata {key!r} "
            f"(metadata: {', '.join(sorted(metadata)) or 'none'})"
        )

    @property
    def source(self) -> str:
        """Where the function is defined, ``module:qualname``."""
        return f"{self.module}:{self.qualname}"

    @property
    def origin(self) -> str:
        """``module:qualname``, plus the distribution when it came through an entry point."""
        if self.distribution:
            return f"{self.source} (distribution {self.distribution!r})"
        return self.source


class Registry:
    """Named functions of one kind, all with the same required leading parameters.

    Args:
        kind: what the functions are, used in messages (e.g. ``"preference_loss"``).
        params: the required leading parameter names, in order. A registered function may add
            parameters after them only if they have defaults (options), or ``**kwargs``.
        metadata_defaults: metadata every entry has unless its registration overrides it.
        returns: a description of the return value, shown in signature errors.
    """

    def __init__(
        self,
        kind: str,
        params: Sequence[str],
        *,
        metadata_defaults: Mapping[str, Any] | None = None,
        returns: str = "",
    ) -> None:
        self.kind = kind
        self.params = tuple(params)
        self.metadata_defaults = dict(metadata_defaults or {})
        self.returns = returns
        self._entries: dict[str, Entry] = {}

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.expected_signature}, {len(self._entries)} entries)"

    @property
    def expected_signature(self) -> str:
        """The signature every function of this kind must have, for messages."""
        sig = f"fn({', '.join(self.params)}, **options)"
        return f"{sig} -> {self.returns}" if self.returns else sig

    def register(self, name: str, **metadata: Any) -> Callable[[F], F]:
        """Decorator: register the function under ``name`` with ``metadata``; returns it unchanged.

        Raises TypeError if its signature does not start with the registry's parameters, and
        ValueError if the name is taken (naming both functions).
        """
        if not isinstance(name, str) or not name or ":" in name:
            raise ValueError(
                f"{self.kind} name must be a non-empty string without ':' (reserved for import "
                f"paths), got {name!r}"
            )

        def decorator(fn: F) -> F:
            entry = self._make_entry(name, fn, metadata, _current_distribution.get())
            existing = self._entries.get(name)
            if existing is not None:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered by {existing.origin}; "
                    f"cannot register {entry.origin} under the same name (choose another name)"
                )
            self._entries[name] = entry
            return fn

        return decorator

    def get(self, name: str) -> Entry:
        """The entry registered as ``name``, or the function at import path ``"pkg.mod:attr"``.

        Raises KeyError (listing the known names) for an unknown name.
        """
        load_plugins()
        if ":" in name:
            return self._get_by_import_path(name)
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none registered"
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known: {known} "
                f"(or give an import path 'package.module:function')"
            ) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        load_plugins()
        return sorted(self._entries)

    def items(self) -> list[Entry]:
        """All entries sorted by name: each has name, fn, metadata, module and distribution."""
        load_plugins()
        return [self._entries[name] for name in sorted(self._entries)]

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        load_plugins()
        return len(self._entries)

    def _get_by_import_path(self, path: str) -> Entry:
        module_name, _, attr = path.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise ImportError(f"cannot load {self.kind} from import path {path!r}: {exc}") from exc
        for entry in self._entries.values():
            if entry.fn is obj:  # already registered: keep its name and metadata
                return entry
        return self._make_entry(path, obj, {}, None)

    def _make_entry(
        self, name: str, fn: Any, metadata: Mapping[str, Any], distribution: str | None
    ) -> Entry:
        module = getattr(fn, "__module__", None) or "<unknown module>"
        qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        if not callable(fn):
            raise TypeError(
                f"{self.kind} {name!r}: {module}:{qualname} is not callable; expected a function "
                f"{self.expected_signature}"
            )
        self._check_signature(name, fn, module, qualname)
        return Entry(
            name=name,
            fn=fn,
            metadata={**self.metadata_defaults, **metadata},
            module=module,
            qualname=qualname,
            distribution=distribution,
        )

    def _check_signature(
        self, name: str, fn: Callable[..., Any], module: str, qualname: str
    ) -> None:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):  # some builtins have no signature: nothing to check
            return
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        params = list(sig.parameters.values())
        leading = [p.name for p in params[: len(self.params)] if p.kind in positional]
        problem = ""
        if tuple(leading) != self.params:
            problem = f"its leading parameters must be ({', '.join(self.params)}) in this order"
        else:
            for p in params[len(self.params) :]:
                needs_value = p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                if needs_value and p.default is inspect.Parameter.empty:
                    problem = f"its extra parameter {p.name!r} needs a default value"
                    break
        if problem:
            raise TypeError(
                f"cannot register {self.kind} {name!r}: {module}:{qualname}{sig} has the wrong "
                f"signature; expected {self.expected_signature}: {problem} (options after them "
                f"need defaults, or use **kwargs)"
            )


# --- entry points -------------------------------------------------------------------------------

_plugins_lock = threading.RLock()
_plugins_loaded = False  # True once every entry point imported without error
_loaded_entry_points: set[tuple[str | None, str, str]] = set()  # (distribution, name, value)
_loading = False  # re-entrancy guard: a plugin may query a registry while it is being imported


# The distribution whose entry point is being imported, so that registrations record it.
_current_distribution: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "rlhf_algorithms_current_distribution", default=None
)


def _distribution_name(entry_point: importlib.metadata.EntryPoint) -> str | None:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return None
    return getattr(dist, "name", None) or dist.metadata["Name"]


def load_plugins() -> None:
    """Import every ``rlhf.algorithms`` entry point not imported yet (called by every query).

    A driver may call it at start-up to fail early. Raises PluginLoadError naming the entry point
    and its distribution if one fails; the others stay loaded and the failing one is retried on
    the next query.
    """
    global _plugins_loaded, _loading
    if _plugins_loaded:
        return
    with _plugins_lock:  # re-entrant: the loading thread may query; other threads wait
        if _plugins_loaded or _loading:
            return
        _loading = True
        try:
            for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                dist = _distribution_name(entry_point)
                key = (dist, entry_point.name, entry_point.value)
                if key in _loaded_entry_points:
                    continue
                token = _current_distribution.set(dist)
                try:
                    entry_point.load()
                except Exception as exc:
                    raise PluginLoadError(
                        f"entry point {entry_point.name!r} = {entry_point.value!r} in group "
                        f"{ENTRY_POINT_GROUP!r} from distribution {dist or '<unknown>'!r} "
                        f"failed to import: {type(exc).__name__}: {exc}"
                    ) from exc
                finally:
                    _current_distribution.reset(token)
                _loaded_entry_points.add(key)
            _plugins_loaded = True
        finally:
            _loading = False

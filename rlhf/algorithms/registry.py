"""Registries: the plug points of the algorithm library, one fixed signature per kind.

A registry maps a name (what a config writes) to a function with the registry's signature, plus
metadata a driver reads instead of branching on the name (e.g. ``needs_critic``)::

    @register_preference_loss("my_loss", needs_reference=True)
    def my_loss(logps: RankedLogps, beta: float, margin: float = 0.0) -> Tensor: ...

    get_preference_loss("my_loss")(logps, beta=0.1, margin=0.5)   # per-example losses [B]
    get_advantage("gae").needs_critic                             # True

A config may also name a function by import path, ``"package.module:attr"``, for quick
experiments; its signature is checked the same way.

Other packages register theirs through the entry-point group ``rlhf.algorithms``: each entry
point names a module (or an object in one) whose import runs its ``@register_...`` decorators.
Entry points are imported lazily, once, the first time any registry is queried. In a
``pyproject.toml``::

    [project.entry-points."rlhf.algorithms"]
    my_losses = "my_package.losses"

Adding a registry for a new kind is three lines (see the bottom of this file). The generic
:class:`Registry` and the entry-point loading live in ``rlhf.registry`` (the standard library
only, so that the reward registries import without torch); they are re-exported here.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rlhf.registry import (
    ENTRY_POINT_GROUP,
    Entry,
    PluginLoadError,
    Registry,
    UnknownNameError,
    load_plugins,
)

# --- the registries -----------------------------------------------------------------------------
# A new kind is three lines: the registry, its decorator, its lookup.

# What a preference loss reads, so a driver computes only that (an undeclared plugin is taken to
# need the reference and to take pairs only): needs_reference (reference log-probs; without it
# no reference model runs), uses_lengths (response token counts), uses_nll (the chosen response's
# length-normalised NLL, -policy / lengths: nothing beyond the policy pass), ranking (takes
# K > 2 ranked responses; False: pairs only), unpaired (reads unpaired feedback, KTO: single
# labelled responses with mismatched pairs, see RankedLogps).
preference_losses = Registry(
    "preference_loss",
    ("logps", "beta"),
    metadata_defaults={
        "needs_reference": True,
        "uses_lengths": False,
        "uses_nll": False,
        "ranking": False,
        "unpaired": False,
    },
    returns="Tensor [B] of per-example losses",
)
register_preference_loss = preference_losses.register


def get_preference_loss(name: str | Mapping[str, float]) -> Entry:
    """The preference loss ``name``, or the weighted sum of several: ``{"sigmoid": 1.0,
    "sft": 0.2}`` (as TRL's ``loss_type`` list with ``loss_weights``).

    A weighted sum calls each loss on the same input with the same beta and returns
    sum_i w_i * loss_i [B]; each option goes to every term that takes it (an option no term
    takes is a TypeError). Its metadata: needs_reference, uses_lengths, uses_nll if any term's
    is set; ranking only if every term's is; unpaired if all terms' are (a mix is an error).
    """
    if isinstance(name, str):
        return preference_losses.get(name)
    if not isinstance(name, Mapping) or not name:
        raise ValueError(
            f"a preference loss is a name or a non-empty mapping of names to weights (e.g. "
            f"{{sigmoid: 1.0, sft: 0.2}}), got {name!r}"
        )
    terms = []
    for term, weight in name.items():
        ok = isinstance(weight, (int, float)) and not isinstance(weight, bool)
        if not ok or not math.isfinite(weight):
            raise ValueError(
                f"the weight of preference loss {term!r} must be a number, got {weight!r}"
            )
        terms.append((preference_losses.get(term), float(weight)))
    combined = WeightedLosses(tuple(terms))
    metadata = {  # every entry has these keys (the registry's metadata_defaults)
        key: any(entry.metadata[key] for entry, _ in terms)
        for key in ("needs_reference", "uses_lengths", "uses_nll")
    }
    metadata["ranking"] = all(entry.metadata["ranking"] for entry, _ in terms)
    unpaired = {entry.metadata["unpaired"] for entry, _ in terms}
    if len(unpaired) > 1:
        kinds = ", ".join(f"{e.name} ({'unpaired' if e.unpaired else 'ranked'})" for e, _ in terms)
        raise ValueError(
            f"a weighted sum cannot mix losses on unpaired feedback with losses on pairs or "
            f"rankings (their data differ): {kinds}"
        )
    metadata["unpaired"] = unpaired.pop()
    return Entry(combined.label, combined, metadata, __name__, "WeightedLosses")


@dataclass(frozen=True)
class WeightedLosses:
    """sum_i w_i * loss_i(logps, beta, **options_i): per-example losses [B] of several losses.

    Each option goes to every term whose function takes it (or takes ``**options``).
    """

    terms: tuple[tuple[Entry, float], ...]  # (loss, weight)

    @property
    def label(self) -> str:
        """E.g. ``1*sigmoid + 0.2*sft``."""
        return " + ".join(f"{weight:g}*{entry.name}" for entry, weight in self.terms)

    def __call__(self, logps: Any, beta: float, **options: Any) -> Any:
        accepted = [_option_names(entry.fn) for entry, _ in self.terms]
        unused = [
            key for key in options if not any(key in names or "**" in names for names in accepted)
        ]
        if unused:
            takes = "; ".join(
                f"{entry.name}: {', '.join(sorted(names - {'**'})) or 'none'}"
                for (entry, _), names in zip(self.terms, accepted, strict=True)
            )
            raise TypeError(
                f"no loss of {self.label} takes the option {unused[0]!r} (options: {takes})"
            )
        total = None
        for (entry, weight), names in zip(self.terms, accepted, strict=True):
            own = {k: v for k, v in options.items() if k in names or "**" in names}
            term = weight * entry(logps, beta, **own)
            total = term if total is None else total + term
        return total


def _option_names(fn: Callable[..., Any]) -> set[str]:
    """The keyword options a loss function takes after (logps, beta); ``"**"`` if any."""
    try:
        params = list(inspect.signature(fn).parameters.values())[2:]
    except (TypeError, ValueError):
        return {"**"}
    return {"**" if p.kind is p.VAR_KEYWORD else p.name for p in params}


advantage_estimators = Registry(
    "advantage_estimator",
    ("batch",),
    metadata_defaults={"needs_critic": False},
    returns="(advantages [B, T], returns [B, T])",
)
register_advantage = advantage_estimators.register
get_advantage = advantage_estimators.get

__all__ = [
    "ENTRY_POINT_GROUP",
    "Entry",
    "PluginLoadError",
    "Registry",
    "UnknownNameError",
    "WeightedLosses",
    "advantage_estimators",
    "get_advantage",
    "get_preference_loss",
    "load_plugins",
    "preference_losses",
    "register_advantage",
    "register_preference_loss",
]

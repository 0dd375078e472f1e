"""All the registries of the framework in one place (what ``rlhf plugins`` lists)."""

from __future__ import annotations

import importlib

from rlhf.algorithms.registry import Registry, load_plugins


def all_registries() -> list[Registry]:
    """Every registry, with the built-ins imported and the entry-point plugins loaded."""
    from rlhf.algorithms import advantage_estimators, preference_losses
    from rlhf.data.strategies import pair_strategies
    from rlhf.driver.loops import BUILTIN_LOOPS, training_loops
    from rlhf.rewards import judges, reward_functions

    for module in BUILTIN_LOOPS:
        importlib.import_module(module)
    load_plugins()
    return [
        preference_losses,
        advantage_estimators,
        pair_strategies,
        reward_functions,
        judges,
        training_loops,
    ]

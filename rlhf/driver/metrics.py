"""One step's metrics from the answers of a training role's ranks.

Every rank (``actors.rank.TrainerRank``) answers a train or eval step with ``sums``: each metric
summed over its units (prompts for preference losses, response tokens for PPO), its unit count
under the unit's name, its ``tokens`` and ``seconds``, and after a train step DeepSpeed's
``grad_norm`` and the ``lr``. The metric keys are whatever the ranks report: the role's step
names them once (e.g. ``rlhf.algorithms.preference_metrics``), and a new one reaches the logs.
"""

from __future__ import annotations

from typing import Any


def merge_rank_metrics(parts: list[dict[str, Any]], per: str = "prompts") -> dict[str, float]:
    """The step's metrics from every rank's ``train_step`` or ``eval_step`` answer.

    Metrics are means over all ranks' units ``per`` ("prompts" or "tokens"; a rank-local mean
    would depend on the sharding); the unit count and tokens are totals, tokens_per_s runs over
    the slowest rank's time; grad_norm and lr (train steps) are the same on every rank and come
    from rank 0.
    """
    units = sum(part[per] for part in parts)
    tokens = sum(part["tokens"] for part in parts)
    seconds = max(part["seconds"] for part in parts)
    keys = dict.fromkeys(key for part in parts for key in part["sums"])  # in reported order
    metrics = {
        key: sum(part["sums"].get(key, 0.0) for part in parts) / max(units, 1) for key in keys
    }
    metrics.update({per: units, "tokens": tokens, "tokens_per_s": tokens / max(seconds, 1e-9)})
    metrics.update({key: float(parts[0][key]) for key in ("grad_norm", "lr") if key in parts[0]})
    return metrics

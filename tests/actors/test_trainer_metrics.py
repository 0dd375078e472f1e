"""merge_rank_metrics: the step's metrics from the ranks' parts, by hand (no Ray)."""

import math

import pytest

from actors.trainer import _METRIC_KEYS, merge_rank_metrics


def _part(prompts: int, value: float, tokens: int, seconds: float, **extra) -> dict:
    sums = {key: value * prompts for key in _METRIC_KEYS}
    return {"sums": sums, "prompts": prompts, "tokens": tokens, "seconds": seconds} | extra


def test_prompt_weighted_means_totals_and_the_slowest_rank():
    parts = [
        _part(3, 1.0, 120, 0.5, grad_norm=2.0, lr=1e-3),
        _part(1, 5.0, 30, 1.5, grad_norm=2.0, lr=1e-3),
    ]
    metrics = merge_rank_metrics(parts)
    for key in _METRIC_KEYS:
        assert metrics[key] == pytest.approx((3 * 1.0 + 1 * 5.0) / 4)  # 2.0, not the mean 3.0
    assert metrics["prompts"] == 4 and metrics["tokens"] == 150
    assert metrics["tokens_per_s"] == pytest.approx(150 / 1.5)
    assert metrics["grad_norm"] == 2.0 and metrics["lr"] == 1e-3


def test_an_empty_rank_adds_nothing_and_eval_parts_have_no_step_keys():
    metrics = merge_rank_metrics([_part(2, 0.25, 40, 0.2), _part(0, 0.0, 0, 0.1)])
    assert metrics["loss"] == pytest.approx(0.25)
    assert "grad_norm" not in metrics and "lr" not in metrics
    assert merge_rank_metrics([_part(0, 0.0, 0, 0.0)])["loss"] == 0.0
    assert not math.isnan(merge_rank_metrics([_part(0, 0.0, 0, 0.0)])["tokens_per_s"])

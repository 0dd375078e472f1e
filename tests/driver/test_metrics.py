"""merge_rank_metrics: one step's metrics from the ranks' answers, by hand (no Ray)."""

import math

import pytest

from rlhf.driver.metrics import merge_rank_metrics

KEYS = ("loss", "rewards/margins")


def _part(prompts: int, value: float, tokens: int, seconds: float, **extra) -> dict:
    sums = {key: value * prompts for key in KEYS} if prompts else {}
    return {"sums": sums, "prompts": prompts, "tokens": tokens, "seconds": seconds} | extra


def test_prompt_weighted_means_totals_and_the_slowest_rank():
    parts = [
        _part(3, 1.0, 120, 0.5, grad_norm=2.0, lr=1e-3),
        _part(1, 5.0, 30, 1.5, grad_norm=2.0, lr=1e-3),
    ]
    metrics = merge_rank_metrics(parts)
    for key in KEYS:
        assert metrics[key] == pytest.approx((3 * 1.0 + 1 * 5.0) / 4)  # 2.0, not the mean 3.0
    assert metrics["prompts"] == 4 and metrics["tokens"] == 150
    assert metrics["tokens_per_s"] == pytest.approx(150 / 1.5)
    assert metrics["grad_norm"] == 2.0 and metrics["lr"] == 1e-3


def test_an_empty_rank_adds_nothing_and_eval_parts_have_no_step_keys():
    metrics = merge_rank_metrics([_part(2, 0.25, 40, 0.2), _part(0, 0.0, 0, 0.1)])
    assert metrics["loss"] == pytest.approx(0.25)
    assert "grad_norm" not in metrics and "lr" not in metrics
    empty = merge_rank_metrics([_part(0, 0.0, 0, 0.0)])
    assert empty["prompts"] == 0 and not math.isnan(empty["tokens_per_s"])


def test_every_key_a_rank_reports_is_merged():
    """A metric the step adds later reaches the logs; no list of keys to extend."""
    parts = [_part(2, 1.0, 10, 0.1), _part(2, 1.0, 10, 0.1)]
    parts[0]["sums"]["new/metric"] = 3.0  # only rank 0 had units it applies to
    metrics = merge_rank_metrics(parts)
    assert metrics["new/metric"] == pytest.approx(3.0 / 4)
    assert list(metrics)[: len(KEYS) + 1] == [*KEYS, "new/metric"]


def test_token_units_for_ppo():
    parts = [
        {"sums": {"policy_loss": 6.0}, "tokens": 3.0, "seconds": 1.0, "grad_norm": 0.5, "lr": 1.0},
        {"sums": {"policy_loss": 2.0}, "tokens": 1.0, "seconds": 2.0, "grad_norm": 0.5, "lr": 1.0},
    ]
    metrics = merge_rank_metrics(parts, per="tokens")
    assert metrics["policy_loss"] == pytest.approx(8.0 / 4)
    assert metrics["tokens"] == 4.0 and metrics["tokens_per_s"] == pytest.approx(4.0 / 2.0)

"""A loss meets the data it reads at config load: unpaired feedback for KTO, pairs for the
pairs-only losses, rankings for the losses with a ranking form (registry metadata); and the
metrics of unpaired feedback become means over their rows."""

import pytest

from rlhf.config import ConfigError, from_dict


def _dpo(loss, fmt):
    from rlhf.driver.dpo import DPOConfig

    return from_dict(DPOConfig, {"data": {"path": "a.jsonl", "format": fmt}, "loss": loss})


@pytest.mark.parametrize(
    ("loss", "fmt", "message"),
    [
        ({"name": "kto"}, "pairs", "'kto' trains on unpaired feedback .* data.format 'pairs'"),
        ({"name": "kto"}, "ultrafeedback", "'kto' trains on unpaired .* 'ultrafeedback' holds"),
        ({"name": "sigmoid"}, "unpaired", "'sigmoid' trains on preferences, but data.format"),
        ({"name": "sigmoid"}, "ranking", "'sigmoid' takes pairs only, but data.format 'ranking'"),
        (
            {"name": {"robust": 1.0, "sft": 0.2}},
            "ranking",
            r"'1\*robust \+ 0.2\*sft' takes pairs only, .*\(cpo, orpo, plackett_luce",
        ),
    ],
)
def test_offline_dpo_refuses_a_loss_for_other_data_at_load(loss, fmt, message):
    with pytest.raises(ConfigError, match=message):
        _dpo(loss, fmt)


def test_offline_dpo_takes_each_loss_with_its_data():
    _dpo({"name": "kto", "options": {"desirable_weight": 1.33}}, "unpaired")
    _dpo({"name": "plackett_luce"}, "ranking")
    _dpo({"name": "simpo"}, "ultrafeedback")
    _dpo({"name": "sigmoid"}, "hh")
    _dpo({"name": "kto"}, "auto")  # each file is checked once read (check_tables)


def _online(loss, strategy, n):
    from rlhf.driver.online_dpo import OnlineDPOConfig

    data = {"loss": {"name": loss}, "rounds": {"strategy": strategy}}
    return from_dict(OnlineDPOConfig, data | {"samplers": {"sampling": {"n": n}}})


def test_online_dpo_refuses_a_pairs_only_loss_with_a_ranking_strategy_at_load():
    with pytest.raises(ConfigError, match="'ipo' takes pairs only, but rounds.strategy 'ranking'"):
        _online("ipo", "ranking", 4)
    with pytest.raises(ConfigError, match="'kto' trains on unpaired feedback"):
        _online("kto", "best_vs_worst", 4)
    _online("plackett_luce", "ranking", 4)
    _online("ipo", "ranking", 2)  # two responses ranked are a pair
    _online("ipo", "all_pairs", 4)


def test_share_means_divide_sums_by_their_rows_share():
    from rlhf.driver.preference_training import share_means

    metrics = {
        "loss": 0.5,
        "rewards/desirable_sum": 0.3,
        "share/desirable": 0.6,
        "rewards/undesirable_sum": 0.0,
        "share/undesirable": 0.0,
        "other/x_sum": 2.0,
    }
    assert share_means(metrics) == pytest.approx(
        {
            "loss": 0.5,
            "rewards/desirable": 0.5,
            "share/desirable": 0.6,
            "share/undesirable": 0.0,
            "other/x_sum": 2.0,
        }
    )

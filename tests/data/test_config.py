"""DataConfig: defaults, and the combinations validate() rejects with the key named."""

from __future__ import annotations

import pytest

from rlhf.config import ConfigError, from_dict
from rlhf.data import DataConfig


def test_valid_config():
    cfg = from_dict(DataConfig, {"path": "data/prefs.jsonl", "eval_fraction": 0.1})
    assert cfg.max_length > cfg.max_prompt_length and cfg.on_bad_row == "error"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "path is required"),
        ({"path": "data/prefs.csv"}, "path 'data/prefs.csv' must end with one of .parquet, .jsonl"),
        ({"path": "a.jsonl", "eval_fraction": 1.0}, r"eval_fraction must be in \[0, 1\), got 1.0"),
        (
            {"path": "a.jsonl", "eval_path": "b.jsonl", "eval_fraction": 0.1},
            "set either eval_path or eval_fraction, not both",
        ),
        (
            {"path": "a.jsonl", "max_prompt_length": 512, "max_length": 512},
            r"max_length \(512\) must exceed max_prompt_length \(512\)",
        ),
        ({"path": "a.jsonl", "on_bad_row": "ignore"}, "'ignore' is not one of 'error', 'skip'"),
        (
            {"path": "a.jsonl", "length_grouping": True},
            r"data\.length_grouping is no longer a key: set schedule\.length_grouping",
        ),
        ({"path": "a.jsonl", "shuffle": False}, r"data\.shuffle is no longer a key"),
        ({"path": "a.jsonl", "length_window": 8}, r"data\.length_window is no longer a key"),
        ({"path": "a.jsonl", "eval_fraction": float("nan")}, r"data\.eval_fraction: must be"),
    ],
)
def test_bad_combinations(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(DataConfig, data, "data")

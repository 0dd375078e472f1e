"""Fixtures for driver tests: the task's preference data, made the DPO paper's way."""

import pytest


@pytest.fixture(scope="session")
def table_cache(tmp_path_factory):
    """One cache of tokenized tables with reference log-probs for every driver test."""
    return tmp_path_factory.mktemp("tables")


@pytest.fixture(scope="session")
def task_pairs(tmp_path_factory, ray_cluster, embedded_model_path):
    """Pairs from 4 SFT samples per training prompt, labelled by the sentiment reward."""
    from rlhf.config import from_dict
    from rlhf.driver import make_data

    out = tmp_path_factory.mktemp("data") / "pairs.parquet"
    cfg = from_dict(
        make_data.MakeDataConfig,
        {
            "output": str(out),
            "num_prompts": 200,
            "strategy": "all_pairs",
            "model": {"path": embedded_model_path},
        },
    )
    return make_data.run(cfg)


def dpo_config(data_path, out_dir, model_path, table_cache, **sections):
    """A small offline DPO config on the embedded model; ``sections`` override parts of it."""
    from rlhf.config import from_dict
    from rlhf.driver.dpo import DPOConfig

    data = {
        "output_dir": str(out_dir),
        "model": {"path": model_path},
        "data": {
            "path": str(data_path),
            "eval_fraction": 0.15,
            "max_prompt_length": 32,
            "max_length": 96,
            "cache_dir": str(table_cache),
        },
        "loss": {"name": "sigmoid", "beta": 0.1},
        "trainer": {
            "num_ranks": 2,
            "zero_stage": 2,
            "micro_batch_size": 8,
            "lr": 1e-3,
            "warmup_steps": 5,
        },
        "schedule": {"epochs": 8, "eval_every": 0, "save_every": 0},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return from_dict(DPOConfig, data)

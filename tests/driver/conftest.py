"""Fixtures for driver tests: the task's preference data, made the DPO paper's way; and the
helpers that train a trainer group a little and read its weights' log-probs."""

import pytest
import torch

SEQ = [1, 10, 11, 12, 13, 14, 15, 2]  # a sequence of the embedded task's tokens


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
            "micro_batch_prompts": 8,
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


@pytest.fixture(scope="session")
def dpo_run(tmp_path_factory, task_pairs, embedded_model_path, table_cache):
    """The offline DPO run of :func:`dpo_config`: ``test_dpo.py`` checks it, and its first steps
    are the uninterrupted run ``test_resume.py``'s killed run must continue."""
    from rlhf.driver import dpo

    out = tmp_path_factory.mktemp("dpo_run")
    return dpo.run(dpo_config(task_pairs, out, embedded_model_path, table_cache))


def one_pair():
    """A preference batch of one pair built from ``SEQ``."""
    from rlhf.data.batch import PreferenceBatch

    ids = torch.tensor([SEQ, SEQ[:-2] + [16, 2]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]] * 2)
    return PreferenceBatch(ids, torch.ones_like(ids), mask, torch.tensor([-10.0, -10.0]), 2)


def train_on_one_pair(ray_cluster, trainers, steps: int) -> None:
    """``steps`` optimizer steps of a trainer group on one pair built from ``SEQ``."""
    batch = one_pair()
    for _ in range(steps):
        ray_cluster.get(trainers.call_sharded("train_step", batch, batch.num_prompts))


def trainer_logprobs(ray_cluster, trainers, model_path: str) -> list[float]:
    """Per-token log-probs of ``SEQ`` (tokens 1..L-1) under the trainer group's weights."""
    from transformers import AutoModelForCausalLM

    weights = ray_cluster.get(trainers.call("state_dict_for_sync"))[0]
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.load_state_dict(weights, strict=False)
    with torch.no_grad():
        logp = model(torch.tensor([SEQ])).logits.log_softmax(-1)[0]
    return [logp[t - 1, SEQ[t]].item() for t in range(1, len(SEQ))]

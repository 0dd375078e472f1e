"""Offline DPO end to end: real Ray, vLLM reference, 2 DeepSpeed ZeRO-2 ranks, tiny model."""

import math

import pytest

from rlhf.run_dir import read_metrics
from tests.driver.conftest import dpo_config

pytestmark = pytest.mark.integration

REQUIRED = [
    "train/loss",
    "train/rewards/chosen",
    "train/rewards/rejected",
    "train/rewards/margins",
    "train/rewards/accuracies",
    "train/logps/chosen",
    "train/logps/rejected",
    "train/grad_norm",
    "train/lr",
    "train/tokens_per_s",
    "eval/loss",
    "eval/rewards/accuracies",
    "eval/rewards/margins",
]


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, task_pairs, embedded_model_path, table_cache):
    from rlhf.driver import dpo

    out = tmp_path_factory.mktemp("dpo_run")
    return dpo.run(dpo_config(task_pairs, out, embedded_model_path, table_cache))


def test_first_step_is_ln2_because_policy_equals_reference(dpo_run):
    first = read_metrics(dpo_run)[0]
    assert first["step"] == 1
    # vLLM's reference log-probs equal the DeepSpeed policy's at step 0: every implicit reward
    # is 0 and the sigmoid loss is exactly ln 2.
    assert abs(first["train/loss"] - math.log(2)) < 1e-4
    assert abs(first["train/rewards/margins"]) < 1e-4


def test_learns_the_preferences(dpo_run):
    records = read_metrics(dpo_run)
    train = [r for r in records if "train/loss" in r]
    epochs = 8  # as dpo_config sets; the accuracy of the last epoch, weighted by its prompts
    last = train[-(len(train) // epochs) :]
    pairs = sum(r["train/prompts"] for r in last)
    assert sum(r["train/rewards/accuracies"] * r["train/prompts"] for r in last) / pairs > 0.9
    final_eval = [r for r in records if "eval/rewards/accuracies" in r][-1]
    assert final_eval["eval/rewards/accuracies"] > 0.5
    assert final_eval["eval/rewards/margins"] > 0
    keys = set().union(*records)
    assert not [k for k in REQUIRED if k not in keys]
    assert (dpo_run / "tensorboard").is_dir() and (dpo_run / "config.yaml").is_file()


def test_saved_model_loads_and_generates_in_vllm(ray_cluster, dpo_run):
    from actors.group import spawn
    from actors.sampler import Sampler
    from rlhf.models.vllm_engine import EngineSettings

    sampler = spawn(Sampler, EngineSettings(model=str(dpo_run / "model")), num_cpus=1)
    groups = ray_cluster.get(
        sampler.generate.remote(["i watched the film and it"], 2, 1.0, 1.0, 20, 0)
    )
    ray_cluster.kill(sampler)
    assert len(groups[0]) == 2 and all(c.token_ids for c in groups[0])


# --- another loss with a reference, in a weighted sum ---------------------------------------------


def test_robust_dpo_plus_sft_raises_held_out_accuracy(
    tmp_path, task_pairs, embedded_model_path, table_cache
):
    """Robust DPO + 0.2 x SFT (the mapping form of loss.name; label_smoothing reaches robust
    only): a short run on the tables the module's other run caches (no second reference pass)
    learns the preferences."""
    from rlhf.driver import dpo

    loss = {"name": {"robust": 1.0, "sft": 0.2}, "beta": 0.1, "options": {"label_smoothing": 0.1}}
    schedule = {"epochs": 2, "eval_every": 0, "save_every": 0}
    cfg = dpo_config(
        task_pairs, tmp_path, embedded_model_path, table_cache, loss=loss, schedule=schedule
    )
    records = read_metrics(dpo.run(cfg))
    first = next(r for r in records if "train/loss" in r)
    # Every implicit reward is 0 at the start: no held-out pair is ordered, and the first loss
    # is robust DPO's ln 2 plus 0.2 x the chosen responses' NLL per token.
    assert abs(first["train/rewards/margins"]) < 1e-4
    assert first["train/loss"] > math.log(2) + 0.1
    evals = [r for r in records if "eval/rewards/accuracies" in r]
    history = [(r["eval/rewards/accuracies"], r["eval/rewards/margins"]) for r in evals]
    assert evals[-1]["eval/rewards/accuracies"] > 0.5, history
    assert evals[-1]["eval/rewards/margins"] > 0, history

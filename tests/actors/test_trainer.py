"""PolicyTrainer ranks (a TrainerRank with a PreferenceStep) on real Ray + DeepSpeed (gloo, CPU)
with the tiny Llama.

One 2-rank ZeRO-3 group (parameters partitioned across the ranks) serves the module's tests in
order (step 0 first); the offload settings get a group each. Plain ZeRO-2, every job's default,
is trained by the job tests (tests/driver: 2 ranks in test_online_dpo.py and test_dpo.py, its
checkpoints resumed in test_resume.py). Reference log-probs come from a local Hugging Face copy
of the trainer's current weights, so "reference == policy" holds whenever a test builds its
batch.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.trainer import start_policy_trainers
from rlhf.data import DataReport, collate
from rlhf.data.batch import PreferenceBatch
from rlhf.data.table import build_table, with_ref_logps
from rlhf.driver.metrics import merge_rank_metrics
from rlhf.driver.rollout import ScoredGroup
from rlhf.driver.sync_probe import start_mismatch_kl
from rlhf.models.deepspeed_config import PreferenceTrainerConfig
from rlhf.models.hf import batch_logps, load_causal_lm
from rlhf.models.vllm_engine import Completion
from tests.models.tiny_llama import random_batch

pytestmark = pytest.mark.integration

BETA = 0.1


def _with_reference(batch: PreferenceBatch, weights: dict[str, torch.Tensor], path: Path):
    """``batch`` with ref_logps computed by a local model holding ``weights``."""
    model = load_causal_lm(path)
    model.load_state_dict(weights)
    model.eval()
    with torch.no_grad():
        ref, _ = batch_logps(model, batch.input_ids, batch.attention_mask, batch.loss_mask)
    return dataclasses.replace(batch, ref_logps=ref)


def _weights(group) -> dict[str, torch.Tensor]:
    states = ray.get(group.call("state_dict_for_sync"))
    assert all(s is None for s in states[1:])
    return states[0]


def _train(group, batch: PreferenceBatch) -> dict[str, float]:
    per_rank = ray.get(group.call_sharded("train_step", batch, batch.num_prompts))
    assert sum(m["prompts"] for m in per_rank) == batch.num_prompts
    assert len({(m["grad_norm"], m["lr"]) for m in per_rank}) == 1  # one step of one group
    return merge_rank_metrics(per_rank)


def _eval(group, batch: PreferenceBatch) -> dict[str, float]:
    return merge_rank_metrics(ray.get(group.call_sharded("eval_step", batch, batch.num_prompts)))


def _digests_agree(group) -> str:
    digests = ray.get(group.call("weights_digest"))
    assert len(set(digests)) == 1, digests
    return digests[0]


@pytest.fixture(scope="module")
def zero3(ray_cluster, tiny_llama_path):
    config = PreferenceTrainerConfig(zero_stage=3, lr=1e-3, num_ranks=2, micro_batch_prompts=2)
    group = start_policy_trainers(str(tiny_llama_path), config, "sigmoid", BETA)
    ray.get(group.call("ping"))
    yield group
    group.kill()


def test_step0_loss_is_ln2_and_ranks_stay_identical(zero3, tiny_llama_path) -> None:
    batch = random_batch(8, seed=10)
    batch = _with_reference(batch, _weights(zero3), tiny_llama_path)
    metrics = _train(zero3, batch)
    assert abs(metrics["loss"] - math.log(2)) < 1e-6
    assert abs(metrics["rewards/margins"]) < 1e-6
    assert metrics["prompts"] == 8 and metrics["tokens"] == batch.attention_mask.sum()
    assert metrics["grad_norm"] > 0 and metrics["lr"] == pytest.approx(1e-3)
    assert metrics["tokens_per_s"] > 0
    for _ in range(2):
        _train(zero3, batch)
    _digests_agree(zero3)
    assert len(set(ray.get(zero3.call("node_id")))) == 1  # PACK on a one-node cluster


def test_loss_falls_and_accuracy_reaches_one_on_a_fixed_batch(zero3, tiny_llama_path) -> None:
    batch = _with_reference(random_batch(8, seed=11), _weights(zero3), tiny_llama_path)
    history = [_train(zero3, batch) for _ in range(15)]
    losses = [m["loss"] for m in history]
    assert abs(losses[0] - math.log(2)) < 1e-6
    assert losses[-1] < 0.5 * losses[0]
    assert sum(b < a for a, b in zip(losses, losses[1:], strict=False)) >= 12
    assert history[-1]["rewards/accuracies"] == 1.0
    _digests_agree(zero3)


def test_uneven_and_empty_shards_keep_ranks_in_step(zero3) -> None:
    for prompts in (3, 1):  # shards of 2 + 1 prompts, then 1 + 0
        batch = random_batch(prompts, seed=12)
        batch = dataclasses.replace(batch, ref_logps=torch.zeros(2 * prompts))
        assert _train(zero3, batch)["prompts"] == prompts
    assert _eval(zero3, batch)["prompts"] == 1
    _digests_agree(zero3)


def test_mismatch_pass_shares_keep_zero3_ranks_in_step_and_equal_one_whole_pass(zero3) -> None:
    """The mismatch pass gives each rank a share of the samples (``share_token_logprobs``):
    shares that need 2 and 1 forward passes (33 and 1 sequences, 32 a pass) finish under ZeRO-3,
    the short one padded with an empty pass, and give what one rank gives for all of them;
    ``start_mismatch_kl`` puts the shares back in order (sampler log-probs equal to the
    trainers' give a KL of 0, any row out of place a positive one)."""
    g = torch.Generator().manual_seed(14)
    lengths = torch.randint(4, 12, (34,), generator=g).tolist()
    sequences = [torch.randint(3, 30, (n,), generator=g).tolist() for n in lengths]
    whole = ray.get(zero3.call("token_logprobs", sequences), timeout=120)[0]
    shares = (sequences[:33], sequences[33:])
    calls = [
        a.share_token_logprobs.remote(s, 33) for a, s in zip(zero3.actors, shares, strict=True)
    ]
    parts = ray.get(calls, timeout=120)
    assert [len(p) for p in parts] == [33, 1]
    for got, expected in zip(parts[0] + parts[1], whole, strict=True):
        assert got == pytest.approx(expected, abs=1e-5)

    def groups(sampler_logps):  # the last 3 tokens as the response, sampled with these
        completions = [
            Completion("p", seq[:-3], "r", seq[-3:], True, sum(lp[-3:]), lp[-3:])
            for seq, lp in zip(sequences, sampler_logps, strict=True)
        ]
        return [ScoredGroup("p", completions, [0.0] * len(completions))]

    assert start_mismatch_kl(zero3, groups(whole)).get(120) == pytest.approx(0.0, abs=1e-6)
    assert start_mismatch_kl(zero3, groups(whole[1:] + whole[:1])).get(120) > 1e-3


def test_shared_prompt_logps_equal_a_local_forward_of_each_sequence(zero3, tiny_llama_path):
    """The ranks run each prompt once with its responses after it (trainer.share_prompt); the
    log-probs equal a local forward of every prompt + response sequence on its own."""
    assert ray.get(zero3.actors[0].__ray_call__.remote(lambda rank: rank.step.share_prompt))
    batch = random_batch(6, num_responses=2, seed=13)
    batch = _with_reference(batch, _weights(zero3), tiny_llama_path)
    metrics = _eval(zero3, batch)
    local = batch.ref_logps.view(-1, 2).mean(0)  # the local model holds the ranks' weights
    assert metrics["logps/chosen"] == pytest.approx(local[0].item(), abs=1e-4)
    assert metrics["logps/rejected"] == pytest.approx(local[1].item(), abs=1e-4)
    assert abs(metrics["rewards/margins"]) < 1e-5


def test_held_table_rows_equal_the_collated_batch(zero3) -> None:
    """train_rows / eval_rows: each rank collates its own shard of the driver's indices."""
    report = DataReport("generated.jsonl", "line")
    prompts = [[1, 5 + i, 6] for i in range(5)]
    responses = [[[10 + i, 11, 2], [12, 13 + i, 14, 2]] for i in range(5)]
    table = with_ref_logps(
        build_table(list(range(5)), prompts, responses, report),
        [[-3.0 - i, -4.0] for i in range(5)],
    )
    ray.get(zero3.call("hold_table", "t", ray.put(table), 0))
    for indices in ([4, 0, 2], [3]):  # shards of 2 + 1 prompts, then 1 + 0
        batch = collate(table.take(indices), 0)
        rows = merge_rank_metrics(ray.get(zero3.call("eval_rows", "t", indices)))
        assert rows == pytest.approx(_eval(zero3, batch) | {"tokens_per_s": rows["tokens_per_s"]})
        assert rows["prompts"] == len(indices)
    with pytest.raises(ray.exceptions.RayTaskError, match="no table 'other' held"):
        ray.get(zero3.call("eval_rows", "other", [0]))


def test_save_pretrained_loads_back_with_the_same_logps(zero3, tiny_llama_path, tmp_path) -> None:
    target = tmp_path / "policy"
    ray.get(zero3.call("save_pretrained", str(target)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]  # no temp dirs left
    assert (target / "model.safetensors").exists()
    AutoTokenizer.from_pretrained(target)

    weights = _weights(zero3)
    loaded = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, weights[name], atol=0, rtol=0)

    batch = _with_reference(random_batch(4, seed=13), weights, tiny_llama_path)
    trainer = _eval(zero3, batch)
    loaded.eval()
    with torch.no_grad():
        logps, _ = batch_logps(loaded, batch.input_ids, batch.attention_mask, batch.loss_mask)
    assert trainer["logps/chosen"] == pytest.approx(logps[0::2].mean().item(), abs=1e-4)
    assert trainer["logps/rejected"] == pytest.approx(logps[1::2].mean().item(), abs=1e-4)
    assert abs(trainer["loss"] - math.log(2)) < 1e-6


def test_checkpoint_round_trip_restores_weights_and_optimizer(zero3, tmp_path) -> None:
    batch = random_batch(4, seed=14)
    batch = dataclasses.replace(batch, ref_logps=torch.full((8,), -20.0))
    ray.get(zero3.call("save_checkpoint", str(tmp_path), "step-a", {"round": 3}))
    saved = _digests_agree(zero3)

    uninterrupted = _train(zero3, batch)
    after = _weights(zero3)
    _train(zero3, batch)  # move further away from the checkpoint

    client_states = ray.get(zero3.call("load_checkpoint", str(tmp_path), "step-a"))
    assert all(cs["round"] == 3 for cs in client_states)
    assert _digests_agree(zero3) == saved
    resumed = _train(zero3, batch)
    assert resumed["loss"] == pytest.approx(uninterrupted["loss"], abs=1e-6)
    assert resumed["grad_norm"] == pytest.approx(uninterrupted["grad_norm"], rel=1e-5)
    # Adam's moments came back too: the update after loading is the uninterrupted one.
    for name, tensor in _weights(zero3).items():
        torch.testing.assert_close(tensor, after[name], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "settings",
    [
        {"zero_stage": 3, "offload_optimizer": True, "offload_params": True},
        {"zero_stage": 2, "offload_optimizer": True},
    ],
    ids=["zero3-offload", "zero2-offload"],
)
def test_partitioned_and_offloaded_configs_train_and_save_full_weights(
    settings, ray_cluster, tiny_llama_path, tmp_path
) -> None:
    config = PreferenceTrainerConfig(lr=1e-3, num_ranks=2, micro_batch_prompts=2, **settings)
    group = start_policy_trainers(str(tiny_llama_path), config, "sigmoid", BETA)
    try:
        original = load_causal_lm(tiny_llama_path).state_dict()
        batch = _with_reference(random_batch(4, seed=15), original, tiny_llama_path)
        metrics = _train(group, batch)
        assert abs(metrics["loss"] - math.log(2)) < 1e-6
        assert metrics["grad_norm"] > 0

        ray.get(group.call("save_pretrained", str(tmp_path / "policy")))
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "policy").state_dict()
        assert {k: v.shape for k, v in loaded.items()} == {k: v.shape for k, v in original.items()}
        assert not torch.equal(loaded["lm_head.weight"], original["lm_head.weight"])  # trained
        _digests_agree(group)
    finally:
        group.kill()

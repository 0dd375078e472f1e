"""Each architecture on the real engines: a DeepSpeed trainer rank and one vLLM reference server.

Per architecture (Llama and Mistral; GPT-2 and Qwen2 in test_online_dpo.py), one trainer (1
rank, ZeRO-2) saves the model with ``save_pretrained``, and the vLLM reference server loads that
saved directory: the saved model loads in vLLM and in Transformers, vLLM's log-probs equal a
Hugging Face forward, offline DPO's first step has loss ln 2 with vLLM's reference log-probs,
and after a trained step and a weight sync the engine's log-probs equal the trainer's.
"""

from __future__ import annotations

import math

import pytest
import ray
import torch

from rlhf.data import collate
from rlhf.models.hf import batch_logps, load_causal_lm
from rlhf.models.tokenizer import load_tokenizer

from .conftest import chat_records, text_records, tokenized

# GPT-2 and Qwen2 run the same checks through the real online loop (test_online_dpo.py), which
# starts their engines anyway; here the untied two, each with one trainer and one engine.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("arch", ["llama", "mistral"], indirect=True),
]

PER_SEQUENCE = 1e-4  # fp32: vLLM and Transformers agree to about 1e-6 per sequence


@pytest.fixture(scope="module")  # its actors end with this module, not the session
def served(arch, ray_cluster, tmp_path_factory):
    """(name, original directory, trainer group, saved directory, vLLM reference server)."""
    from actors.group import spawn
    from actors.reference import ReferenceServer
    from actors.trainer import start_policy_trainers
    from rlhf.models.deepspeed_config import PreferenceTrainerConfig
    from rlhf.models.vllm_engine import EngineSettings

    name, path = arch
    config = PreferenceTrainerConfig(num_ranks=1, zero_stage=2, micro_batch_prompts=8, lr=1e-2)
    trainers = start_policy_trainers(str(path), config, "sigmoid", 0.1)
    saved = tmp_path_factory.mktemp("saved") / name
    ray.get(trainers.call("save_pretrained", str(saved)))
    server = spawn(ReferenceServer, EngineSettings(model=str(saved)), num_cpus=1)
    assert ray.get(server.backend_name.remote()) == "vllm"  # served by vLLM, no fallback
    yield name, path, trainers, saved, server
    ray.kill(server)
    trainers.kill()


def _table(path):
    """Chat and plain-text preferences tokenized by the architecture's tokenizer."""
    import pyarrow as pa

    tokenizer = load_tokenizer(path)
    chat, _ = tokenized(tokenizer, chat_records(4))
    text, _ = tokenized(tokenizer, text_records(4))
    return pa.concat_tables([chat, text]), tokenizer


def _hf_logps(model, table, pad: int) -> list[float]:
    batch = collate(table, pad)
    with torch.no_grad():
        logps, _ = batch_logps(model, batch.input_ids, batch.attention_mask, batch.loss_mask)
    return logps.tolist()


def _flat(table):
    prompts, responses = [], []
    for row in table.to_pylist():
        for response in row["response_ids"]:
            prompts.append(row["prompt_ids"])
            responses.append(response)
    return prompts, responses


def test_saved_model_loads_in_transformers_and_vllm_scores_like_it(served):
    """The trainer's save loads in Transformers with the original weights; vLLM's reference
    log-probs of that save equal a Hugging Face forward of the original, per sequence."""
    from transformers import AutoModelForCausalLM

    _, path, _, saved, server = served
    original = load_causal_lm(path).eval()
    reloaded = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)
    assert type(reloaded) is type(original)
    for key, value in original.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, atol=0, rtol=0)
    assert load_tokenizer(saved).get_vocab() == load_tokenizer(path).get_vocab()
    table, tokenizer = _table(path)
    want = _hf_logps(original, table, tokenizer.pad_token_id)
    got = ray.get(server.response_logps.remote(*_flat(table)))
    assert len(got) == len(want) == 16
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < PER_SEQUENCE


def test_offline_dpo_first_step_is_ln2_and_the_sync_matches_the_trainer(served):
    """Reference log-probs from vLLM, policy from DeepSpeed (shared prompts on): the step-1 loss
    is ln 2. After that step, the weights the trainer syncs give vLLM the trainer's log-probs."""
    from rlhf.driver.preference_training import (
        add_reference_logps,
        hold_table,
        step_metrics,
        submit_step,
    )

    _, path, trainers, saved, server = served
    table, tokenizer = _table(path)
    table = add_reference_logps(server, table, chunk_size=8)
    hold_table(trainers, "arch", table, tokenizer.pad_token_id)
    first = step_metrics(submit_step(trainers, "arch", list(range(table.num_rows))))
    assert abs(first["loss"] - math.log(2)) < 1e-4
    assert abs(first["rewards/margins"]) < 1e-4

    weights = ray.get(trainers.call("state_dict_for_sync"))[0]
    trained = load_causal_lm(path).eval()
    missing, unexpected = trained.load_state_dict(weights, strict=False)
    assert not unexpected  # tied weights appear once: only a tied lm_head may be missing
    assert all(k == "lm_head.weight" and trained.config.tie_word_embeddings for k in missing)
    want = _hf_logps(trained, table, tokenizer.pad_token_id)
    before = [r for row in table.column("ref_logps").to_pylist() for r in row]
    assert max(abs(a - b) for a, b in zip(before, want, strict=True)) > 1e-2  # it trained
    assert ray.get(server.load_weights.remote(ray.put(weights))) == len(weights)
    got = ray.get(server.response_logps.remote(*_flat(table)))
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < PER_SEQUENCE

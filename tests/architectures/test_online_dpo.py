"""One online DPO run on GPT-2 (pad = EOS, tied, learned positions) and on Qwen2 (biases, tied,
grouped-query attention): the real loop, ``rlhf.driver.online_dpo.run``, with ``model.path``
set to the architecture's directory. Llama and Mistral get the same engine checks in
test_engines.py without the loop (it costs about a minute per architecture).

Two rounds: round 0 trains on preferences of a reward that differs between responses; round 1's
reward ties everything, so round 1 trains nothing and the saved model is the policy the samplers
got by the sync after round 0. Round 1's samples then carry the sampler's log-probs after that
sync, which must equal the saved model's (the trainer's) to 1e-4 per response.
"""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest
import torch

from rlhf.models.hf import load_causal_lm

pytestmark = pytest.mark.integration

PER_SEQUENCE = 1e-4

CALLS = {"n": 0}


def varied_then_tied(prompts: list, responses: list[str]) -> list[float]:
    """Round 0: the count of "e" in a response (random models write varied text); later
    rounds: 0 for all, so no preference survives and the policy stays as round 0 left it."""
    CALLS["n"] += 1
    if CALLS["n"] > 1:
        return [0.0] * len(responses)
    return [float(r.count("e")) + 0.01 * len(r) for r in responses]


def _config(out_dir, model_path):
    from rlhf.config import from_dict
    from rlhf.driver.online_dpo import OnlineDPOConfig

    return from_dict(
        OnlineDPOConfig,
        {
            "output_dir": str(out_dir),
            "model": {"path": str(model_path)},
            "reward": {"function": f"{__name__}:varied_then_tied"},
            "loss": {"name": "sigmoid", "beta": 0.1},
            "samplers": {"sampling": {"n": 4, "max_tokens": 12}},
            "rounds": {"rounds": 2, "prompts_per_round": 8, "eval_prompts": 4},
            "trainer": {"num_ranks": 1, "zero_stage": 2, "micro_batch_prompts": 8, "lr": 1e-2},
        },
    )


def _hf_response_logps(model, rows) -> list[float]:
    """Summed log-probs of each sample's response tokens under a Hugging Face forward."""
    out = []
    for row in rows:
        prompt, response = row["prompt_ids"], row["response_ids"]
        sequence = prompt + response
        with torch.no_grad():
            logp = model(torch.tensor([sequence])).logits[0].double().log_softmax(-1)
        out.append(sum(logp[t - 1, sequence[t]].item() for t in range(len(prompt), len(sequence))))
    return out


@pytest.mark.parametrize("name", ["gpt2", "qwen2"])
def test_online_dpo_round_and_sync(name, build_arch, ray_cluster, tmp_path):
    from rlhf.driver import online_dpo

    path = build_arch(name)
    run_dir = online_dpo.run(_config(tmp_path / "run", path))
    rounds = run_dir / "rounds"
    first = pq.read_table(rounds / "round_0000" / "samples.parquet").to_pylist()
    second = pq.read_table(rounds / "round_0001" / "samples.parquet").to_pylist()
    assert len(first) == len(second) == (8 + 4) * 4
    assert pq.read_table(rounds / "round_0000" / "preferences.parquet").num_rows > 0
    assert pq.read_table(rounds / "round_0001" / "preferences.parquet").num_rows == 0

    from rlhf.run_dir import read_metrics

    steps = [r for r in read_metrics(run_dir) if "train/loss" in r and "round" not in r]
    assert abs(steps[0]["train/loss"] - math.log(2)) < 1e-4  # policy == vLLM reference

    original = load_causal_lm(path).eval()
    want = _hf_response_logps(original, first)
    for key in ("logprob", "ref_logprob"):  # sampler and vLLM reference, before any sync
        got = [row[key] for row in first]
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < PER_SEQUENCE, key

    saved = load_causal_lm(run_dir / "model").eval()  # the trainer's weights after round 0
    want = _hf_response_logps(saved, second)
    got = [row["logprob"] for row in second]  # the sampler's, after the sync
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < PER_SEQUENCE
    before = _hf_response_logps(original, second)
    assert max(abs(a - b) for a, b in zip(got, before, strict=True)) > 1e-2  # it trained
    eos = [row["response_ids"][-1] for row in first + second if row["finished"]]
    assert all(token == saved.config.eos_token_id for token in eos)

"""Online DPO, then PPO, on each architecture from a prompt file of the user's, as a user runs them.

Per architecture, its prompt file (plain text for GPT-2; chat messages for Qwen2, Llama and
Mistral, through three chat templates, two of which write the BOS themselves), in JSONL or
Parquet, with no held-out setting (the online jobs hold out 5% of it):

1. online DPO, two rounds. Round 0 trains on a reward that differs between responses; round 1's
   reward ties everything, so round 1 trains nothing and the saved model is the policy the
   samplers got by the sync after round 0. Checked: each sample stores its prompt as given and
   as rendered; every score is the reward of the prompt as given; the step-1 loss is ln 2
   (trainer policy == vLLM reference, shared prompts); round 0's sampler and reference
   log-probs equal a Hugging Face forward of the original model (1e-4 per response); round 1's
   sampler log-probs (after the sync) equal a Hugging Face forward of the saved model; in both
   rounds the DeepSpeed trainer's per-token log-probs equal the samplers' (mismatch KL 0).
2. On GPT-2 (learned absolute positions, Conv1D weights) and Llama (rotary positions, as Qwen2
   and Mistral have) only: PPO, one iteration, from the model online DPO saved (so it loads in
   Transformers, in vLLM's samplers and in the Hugging Face reference): the trainer's old
   log-probs equal the vLLM samplers' (per token, the importance ratio 1) and the reference's
   (KL 0), with RLOO on GPT-2 and GAE with a critic on Llama. The reference is the Hugging Face
   backend: the vLLM reference of each architecture is checked in step 1 (it equals a Hugging
   Face forward), and one vLLM engine fewer starts. Qwen2 and Mistral run online DPO alone (a
   job start fewer each): their trainer and samplers agree per token in step 1 already, and
   what PPO adds is the same for every rotary model (GRPO's math is tested in tests/driver).
"""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf.run_dir import read_metrics

# The reward actor of each job imports this module for varied_then_tied: torch and Transformers
# are imported where the checks use them, so that its start stays light (9 CPU-s less each).

pytestmark = pytest.mark.integration

PER_SEQUENCE = 1e-4  # fp32: vLLM and Transformers agree to about 1e-6 per sequence
ROWS = 12  # prompts in each file: 1 held out (5%, at least 1), 11 to train on
PROMPTS_PER_ROUND, K = 4, 4

# name: (file suffix, chat messages?, PPO advantage estimator; None: no PPO job)
JOBS = {
    "gpt2": ("parquet", False, "rloo"),
    "qwen2": ("jsonl", True, None),
    "llama": ("parquet", True, "gae"),
    "mistral": ("jsonl", True, None),
}
SUBJECTS = ["the cat", "a good movie", "the sea", "my garden", "the old town", "a river"]

CALLS = {"n": 0}  # per process: each run starts its own reward actor


def given_weight(prompt) -> float:
    """A number only the prompt as given has (its rendered text would give another)."""
    if isinstance(prompt, str):
        return len(prompt)
    return 100 * len(prompt) + sum(len(m["content"]) for m in prompt)


def varied_then_tied(prompts: list, responses: list[str]) -> list[float]:
    """The first call (round 0): the count of "e" in a response (random models write varied
    text) plus a small term of the prompt as given; later calls: 0 for all, so no preference
    survives and the policy stays as round 0 left it."""
    CALLS["n"] += 1
    if CALLS["n"] > 1:
        return [0.0] * len(responses)
    return [
        r.count("e") + 0.01 * len(r) + 1e-4 * given_weight(p)
        for p, r in zip(prompts, responses, strict=True)
    ]


def write_prompts(directory, name: str):
    """The architecture's prompt file; returns (path, field)."""
    suffix, chat, _ = JOBS[name]
    texts = [f"Tell me about {s} {i}." for i, s in enumerate(SUBJECTS * 2)][:ROWS]
    if chat:
        system = [{"role": "system", "content": "Be brief."}] if name == "qwen2" else []
        rows = [{"messages": [*system, {"role": "user", "content": t}]} for t in texts]
        field = "messages"
    else:
        rows, field = [{"text": t} for t in texts], "text"
    path = directory / f"prompts.{suffix}"
    if suffix == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path, field


def _prompts(path, field) -> dict:
    return {"path": str(path), "field": field, "max_length": 64}


def online_dpo_config(out_dir, model_path, prompts: dict):
    from rlhf.config import from_dict
    from rlhf.driver.online_dpo import OnlineDPOConfig

    return from_dict(
        OnlineDPOConfig,
        {
            "output_dir": str(out_dir),
            "model": {"path": str(model_path)},
            "prompts": prompts,
            "reward": {"function": f"{__name__}:varied_then_tied"},
            "loss": {"name": "sigmoid", "beta": 0.1},
            "samplers": {"sampling": {"n": K, "max_tokens": 10}},
            "rounds": {"rounds": 2, "prompts_per_round": PROMPTS_PER_ROUND, "eval_prompts": 4},
            "trainer": {"num_ranks": 1, "zero_stage": 2, "micro_batch_prompts": 4, "lr": 1e-2},
        },
    )


def ppo_config(out_dir, model_path, prompts: dict, advantage: str):
    from rlhf.config import from_dict
    from rlhf.driver.ppo import PPOConfig

    trainer = {"num_ranks": 1, "zero_stage": 0, "micro_batch_sequences": 16, "lr": 1e-3}
    return from_dict(
        PPOConfig,
        {
            "output_dir": str(out_dir),
            "model": {"path": str(model_path)},
            "prompts": prompts,
            "reward": {"function": f"{__name__}:varied_then_tied"},
            "reference": {"backend": "hf"},  # the vLLM one is checked in online DPO
            "samplers": {"sampling": {"n": K, "max_tokens": 10}},
            "ppo": {
                "iterations": 1,
                "prompts_per_iteration": PROMPTS_PER_ROUND,
                "eval_prompts": 4,
                "epochs": 1,
                "minibatch_size": PROMPTS_PER_ROUND * K,
                "advantage": advantage,
            },
            "trainer": trainer,
            "critic": trainer,
        },
    )


def _hf_response_logps(model, rows) -> list[float]:
    """Summed log-probs of each sample's response tokens under a Hugging Face forward."""
    import torch

    out = []
    for row in rows:
        prompt, response = row["prompt_ids"], row["response_ids"]
        sequence = prompt + response
        with torch.no_grad():
            logp = model(torch.tensor([sequence])).logits[0].double().log_softmax(-1)
        out.append(sum(logp[t - 1, sequence[t]].item() for t in range(len(prompt), len(sequence))))
    return out


def _largest_gap(got: list[float], want: list[float]) -> float:
    return max(abs(a - b) for a, b in zip(got, want, strict=True))


def _check_prompts_as_given(rows: list[dict], file_rows: list, tokenizer) -> None:
    """Each sample's ``prompt`` is a file row's prompt as given, ``prompt_text`` its rendering
    (the chat template's, less a BOS the sampler adds), and its score is of the prompt as given;
    the held-out prompt is never a training one."""
    for row in rows:
        given = row["prompt"]
        assert given in file_rows
        if isinstance(given, list):
            rendered = tokenizer.apply_chat_template(
                given, tokenize=False, add_generation_prompt=True
            )
            assert row["prompt_text"] in (
                rendered,
                rendered.removeprefix(tokenizer.bos_token or ""),
            )
        else:
            assert row["prompt_text"] == given
        ids = tokenizer(row["prompt_text"])["input_ids"]  # as the sampler tokenizes it
        assert row["prompt_ids"] == ids
        if tokenizer.bos_token_id is not None:
            assert ids.count(tokenizer.bos_token_id) <= 1  # never a BOS twice
        want = row["response"].count("e") + 0.01 * len(row["response"]) + 1e-4 * given_weight(given)
        assert row["score"] == pytest.approx(want, abs=1e-6)
    held = {json.dumps(r["prompt"]) for r in rows if r["split"] == "eval"}
    train = {json.dumps(r["prompt"]) for r in rows if r["split"] == "train"}
    assert len(held) == 1 and len(train) == PROMPTS_PER_ROUND and not held & train


@pytest.mark.parametrize("name", list(JOBS))
def test_online_dpo_then_ppo_from_a_prompt_file(name, build_arch, ray_cluster, tmp_path):
    from rlhf.driver import online_dpo, ppo
    from rlhf.models.hf import load_causal_lm
    from rlhf.models.tokenizer import load_tokenizer

    path = build_arch(name)
    prompt_file, field = write_prompts(tmp_path, name)
    prompts = _prompts(prompt_file, field)
    if prompt_file.suffix == ".jsonl":
        lines = prompt_file.read_text().splitlines()
        file_rows = [json.loads(line)[field] for line in lines]
    else:
        file_rows = pq.read_table(prompt_file).column(field).to_pylist()

    run_dir = online_dpo.run(online_dpo_config(tmp_path / "online_dpo", path, prompts))
    rounds = run_dir / "rounds"
    first = pq.read_table(rounds / "round_0000" / "samples.parquet").to_pylist()
    second = pq.read_table(rounds / "round_0001" / "samples.parquet").to_pylist()
    assert len(first) == len(second) == (PROMPTS_PER_ROUND + 1) * K
    assert pq.read_table(rounds / "round_0000" / "preferences.parquet").num_rows > 0
    assert pq.read_table(rounds / "round_0001" / "preferences.parquet").num_rows == 0
    _check_prompts_as_given(first, file_rows, load_tokenizer(path))

    steps = [r for r in read_metrics(run_dir) if "train/loss" in r and "round" not in r]
    assert abs(steps[0]["train/loss"] - math.log(2)) < 1e-4  # policy == vLLM reference
    # Per token, the trainer's log-probs equal the samplers' of the same weights, before and
    # after the sync (k3 KL of the two, over response tokens).
    mismatch = [r["rollout/mismatch_kl"] for r in read_metrics(run_dir) if "round" in r]
    assert len(mismatch) == 2 and max(abs(kl) for kl in mismatch) < 1e-6, mismatch

    original = load_causal_lm(path).eval()
    want = _hf_response_logps(original, first)
    for key in ("logprob", "ref_logprob"):  # sampler and vLLM reference, before any sync
        assert _largest_gap([row[key] for row in first], want) < PER_SEQUENCE, key

    saved = load_causal_lm(run_dir / "model").eval()  # the trainer's weights after round 0
    assert type(saved) is type(original)
    assert load_tokenizer(run_dir / "model").get_vocab() == load_tokenizer(path).get_vocab()
    got = [row["logprob"] for row in second]  # the sampler's, after the sync
    assert _largest_gap(got, _hf_response_logps(saved, second)) < PER_SEQUENCE
    assert _largest_gap(got, _hf_response_logps(original, second)) > 1e-2  # it trained
    eos = [row["response_ids"][-1] for row in first + second if row["finished"]]
    assert all(token == saved.config.eos_token_id for token in eos)  # an EOS = pad is kept

    advantage = JOBS[name][2]
    if advantage is None:
        return  # online DPO alone (see the module's docstring)
    ppo_dir = ppo.run(ppo_config(tmp_path / "ppo", run_dir / "model", prompts, advantage))
    (iteration,) = [r for r in read_metrics(ppo_dir) if "eval/reward/mean" in r]
    # Old log-probs (DeepSpeed) of the saved model against the samplers' (vLLM), per token:
    # no token's ratio pi_old / mu above 1 + 1e-3, their mean 1 and the mismatch KL 0; and
    # against the reference's (Hugging Face), per token: KL 0.
    assert iteration["ppo_is/ratio_max"] < 1 + 1e-3
    assert iteration["ppo_is/ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    assert abs(iteration["rollout/mismatch_kl"]) < 1e-6
    assert abs(iteration["train/kl"]) < 1e-3
    assert ("critic/value_loss" in iteration) == (advantage == "gae")
    assert (ppo_dir / "model" / "config.json").exists()

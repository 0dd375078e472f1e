"""examples/bring_your_own/run.py, as a user runs it: its own Qwen2 with a BPE tokenizer and a
chat template, a JSONL file of chat prompts, and a reward function from its own module
(``my_reward:letter_share``), trained by ``rlhf train`` with online DPO (one round here; the
example's PPO job on the same kind of inputs is tests/architectures/test_jobs.py's Qwen2 run). The reward reads the letter that each prompt's system message asks for, which only
the messages carry: every score written must be the reward of the prompt's messages as given.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bring_your_own"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bring_your_own_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reward_reads_the_letter_the_system_message_asks_for():
    reward = _module("my_reward")
    chat = [{"role": "system", "content": "Use the letter 'e'."}, {"role": "user", "content": "Hi"}]
    other = [{"role": "system", "content": "Use the letter 's'."}, chat[1]]
    # "tree sea": 8 characters (t r e e _ s e a), of which 3 are e and 1 is s.
    assert reward.letter_share([chat, other], ["tree sea", "tree sea"]) == [3 / 8, 1 / 8]
    assert reward.letter_share([chat], [""]) == [0.0]
    with pytest.raises(TypeError, match="chat messages, got str"):
        reward.letter_share(["Use the letter 'e'."], ["see"])


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.integration
def test_bring_your_own_runs_online_dpo(ray_cluster, tmp_path):
    from transformers import AutoTokenizer

    # The reference on the Hugging Face backend: one vLLM engine (the sampler's) starts instead
    # of two; the vLLM reference of a Qwen2 with a chat template runs in tests/architectures.
    # The job joins the session's Ray (ray.address, as a user's joins a cluster) instead of
    # starting a local one, from the example's folder: Ray puts a joining driver's working
    # directory on its workers' path, so the reward actor imports my_reward from there.
    address = ray_cluster.get_runtime_context().gcs_address
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "run.py"), "--workdir", str(tmp_path), "--rounds", "1"]
        + ["--jobs", "online_dpo", "reference.backend=hf", f"ray.address={address}"],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    rounds = [r for r in _metrics(tmp_path / "online_dpo") if "eval/reward/mean" in r]
    assert [r["round"] for r in rounds] == [0]
    assert (tmp_path / "online_dpo" / "model" / "config.json").exists()
    assert not (tmp_path / "ppo").exists()
    dpo_round = next(r for r in _metrics(tmp_path / "online_dpo") if "round" in r)
    assert dpo_round["preferences"] > 0  # the user's reward told responses apart

    # The samples are of the user's prompts: each one stores a prompt file row's messages as
    # given and as the model's chat template renders them, held-out rows for the eval split only.
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    rows = [json.loads(line) for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    given = [r["messages"] for r in rows]
    samples = pq.read_table(tmp_path / "online_dpo/rounds/round_0000/samples.parquet").to_pylist()
    assert {s["split"] for s in samples} == {"train", "eval"}
    for s in samples:
        assert s["prompt"] in given
        assert s["prompt_text"] == tokenizer.apply_chat_template(
            s["prompt"], tokenize=False, add_generation_prompt=True
        )
    train = {json.dumps(s["prompt"]) for s in samples if s["split"] == "train"}
    held_out = {json.dumps(s["prompt"]) for s in samples if s["split"] == "eval"}
    assert len(train) == 8 and len(held_out) == 4 and not train & held_out

    # Each score is the user's reward of the messages as given (another letter scores otherwise).
    reward = _module("my_reward")
    messages = [s["prompt"] for s in samples]
    responses = [s["response"] for s in samples]
    scores = [s["score"] for s in samples]
    assert scores == pytest.approx(reward.letter_share(messages, responses), abs=1e-12)
    assert any(score > 0 for score in scores)
    other = [[{"role": "system", "content": "Use the letter 'z'."}, *m[1:]] for m in messages]
    assert reward.letter_share(other, responses) != pytest.approx(scores)

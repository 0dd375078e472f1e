"""Online DPO and PPO on a model, prompt file and reward function of your own.

    python examples/bring_your_own/run.py [--workdir runs/bring_your_own] [--rounds 2]
        [--jobs online_dpo,ppo] [KEY=VALUE ...]

Builds what a user usually arrives with, then trains on it the way a user would:

1. a tiny Qwen2 (random weights; hidden 128, 2 heads of 64, 2 layers) with a byte-level BPE
   tokenizer trained here on a few hundred sentences, given ChatML as its chat template, saved
   with ``save_pretrained`` into ``WORKDIR/model`` like any Hugging Face checkpoint;
2. ``WORKDIR/prompts.jsonl``: one chat conversation per line (``{"messages": [...]}``), whose
   system message asks for a letter;
3. ``rlhf train online_dpo.yaml`` and ``rlhf train ppo.yaml`` (this folder), with this folder on
   ``PYTHONPATH`` so the driver and the Ray workers import the reward ``my_reward:letter_share``;
   any ``KEY=VALUE`` given to run.py is passed on to both as a further override.

The runs land in ``WORKDIR/online_dpo`` and ``WORKDIR/ppo``. With a model of your own, skip
steps 1-2 and point ``model.path`` and ``prompts.path`` at yours.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RLHF = Path(sys.executable).with_name("rlhf")  # the console script of this environment

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SUBJECTS = ["the sea", "a cat", "the old town", "my garden", "the river", "a good book"]
VERBS = ["is", "looks", "seems", "was", "feels"]
WORDS = ["calm", "bright", "quiet", "green", "slow", "lovely", "dark", "sweet", "open", "warm"]
LETTERS = ["e", "a", "o", "s"]


def sentences(count: int, seed: int = 0) -> list[str]:
    """A small corpus to learn the tokenizer's merges from."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(WORDS)} and "
        f"{rng.choice(WORDS)} today."
        for _ in range(count)
    ]


def build_model(directory: Path) -> Path:
    """A random-weight Qwen2 with a byte-level BPE tokenizer and a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(sentences(300), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",  # ends an assistant turn: the sampler stops there
        pad_token="<|endoftext|>",
        chat_template=CHATML,
        model_max_length=256,
    )
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head size 64, which vLLM's CPU attention needs
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def chat_prompts(count: int) -> list[dict]:
    """Rows of chat messages: a system message asking for a letter, and a user request (no
    two rows alike for up to 24 rows)."""
    rows = []
    for i in range(count):
        letter, subject = LETTERS[i % len(LETTERS)], SUBJECTS[i // len(LETTERS) % len(SUBJECTS)]
        system = {"role": "system", "content": f"Use the letter '{letter}'."}
        user = {"role": "user", "content": f"Say something about {subject}."}
        rows.append({"messages": [system, user]})
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    """One JSON object per line, as the prompt reader takes it."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def train(
    config: str, workdir: Path, name: str, rounds: int, extra: list[str] | None = None
) -> Path:
    """``rlhf train CONFIG`` on this example's files, then the ``extra`` overrides; returns the
    run directory."""
    run_dir = workdir / name
    count = "rounds.rounds" if name == "online_dpo" else "ppo.iterations"
    overrides = [
        f"model.path={workdir / 'model'}",
        f"prompts.path={workdir / 'prompts.jsonl'}",
        f"output_dir={run_dir}",
        f"{count}={rounds}",
        *(extra or []),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    command = [str(RLHF), "train", str(HERE / config), *overrides]
    print(f"$ PYTHONPATH={HERE} rlhf", " ".join(command[1:]), flush=True)
    subprocess.run(command, env=env, check=True)
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/bring_your_own"))
    parser.add_argument("--rounds", type=int, default=2, help="online DPO rounds, PPO iterations")
    parser.add_argument(
        "--jobs", default="online_dpo,ppo", help="which of the two jobs to run, in this order"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="more overrides for both jobs"
    )
    args = parser.parse_args()
    jobs = args.jobs.split(",")
    if not jobs or not set(jobs) <= {"online_dpo", "ppo"}:
        parser.error(f"--jobs: a comma-separated list of online_dpo and ppo, got {args.jobs!r}")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    build_model(workdir / "model")
    write_jsonl(chat_prompts(24), workdir / "prompts.jsonl")
    for name in jobs:
        train(f"{name}.yaml", workdir, name, args.rounds, args.overrides)


if __name__ == "__main__":
    main()

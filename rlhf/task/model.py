"""Builds the embedded tiny model: a word-level Llama trained by SFT on the grammar's reviews.

``build_tiny_model()`` returns a directory that loads like any hub model::

    <cache>/tiny-sentiment-<key>/config.json, model.safetensors, generation_config.json,
                                tokenizer.json, tokenizer_config.json, task.json

``<key>`` hashes every build setting, ``BUILDER_VERSION`` and a fingerprint of the grammar's
output, so a change to any of them builds a new model and the same settings reuse the cache.
A build is written to a hidden temporary sibling and renamed into place when complete; a
killed build leaves nothing that looks finished. ``task.json`` records the settings, the final
SFT loss and the reward of the model's own completions on eval prompts: the starting point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlhf.files import replace_dir
from rlhf.task.grammar import make_prompts, make_sft_corpus, vocabulary
from rlhf.task.reward import sentiment_score
from rlhf.task.tokenizer import build_tokenizer

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

BUILDER_VERSION = 1  # bump when the training code changes what a build produces
DEFAULT_STEPS = 400
MODEL_PREFIX = "tiny-sentiment-"
TASK_FILE = "task.json"  # written last: its presence marks a complete build
IGNORE = -100  # label of positions without loss (prompt, padding)


@dataclasses.dataclass(frozen=True)
class TinyModelSettings:
    """Everything that decides what a build produces; all of it goes into the cache key."""

    seed: int = 0
    steps: int = DEFAULT_STEPS
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1  # the cosine schedule ends at learning_rate * min_lr_ratio
    weight_decay: float = 0.01
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2  # head_dim = hidden_size / num_heads = 64, as vLLM's CPU attention needs
    intermediate_size: int = 384
    max_position_embeddings: int = 256
    eval_prompts: int = 64
    eval_max_new_tokens: int = 48

    def key(self) -> str:
        """A short hash of the settings, ``BUILDER_VERSION`` and the grammar's fingerprint."""
        record = {
            "builder_version": BUILDER_VERSION,
            "grammar": _grammar_fingerprint(self.seed),
            **dataclasses.asdict(self),
        }
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]


def _grammar_fingerprint(seed: int) -> str:
    """A hash of the vocabulary and a few corpus pairs: changes when the grammar does."""
    sample = {"vocabulary": vocabulary(), "corpus": make_sft_corpus(16, seed)}
    return hashlib.sha256(json.dumps(sample).encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """Where built models live: ``$RLHF_CACHE``, else ``~/.cache/rlhf``."""
    return Path(os.environ.get("RLHF_CACHE") or Path.home() / ".cache" / "rlhf").expanduser()


def build_tiny_model(
    cache_dir: Path | None = None,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    steps: int = DEFAULT_STEPS,
) -> Path:
    """The directory of the embedded tiny model, built first if the cache has none.

    A build takes under a minute on 2 idle CPU cores (a few when the cores are shared). A
    complete build with the same settings is reused unless ``force``; concurrent callers wait
    for one another (a file lock per key) instead of building twice.
    """
    settings = TinyModelSettings(seed=seed, steps=steps)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache_dir / f"{MODEL_PREFIX}{settings.key()}"
    if not force and is_complete(final):
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache_dir / f".{final.name}.lock"):
        if not force and is_complete(final):  # another process built it while we waited
            return final
        for stale in cache_dir.glob(f".{final.name}.*.tmp"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=cache_dir))
        try:
            _build_into(tmp, settings, progress)
            replace_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def is_complete(path: Path) -> bool:
    """Whether ``path`` holds a finished build (its ``task.json`` is written last)."""
    return (path / TASK_FILE).is_file()


def load_tiny_model(path: Path) -> LlamaForCausalLM:
    """The built model in float32, in eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The built model's tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` (created if missing) for the block."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _make_readable(directory: Path) -> None:
    """Gives the build the usual permissions (``mkdtemp`` makes it private to the user)."""
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)


@contextlib.contextmanager
def _quiet_progress_bars(quiet: bool) -> Iterator[None]:
    """Turns off transformers' progress bars for the block when ``quiet``, then restores them."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was_enabled:
            hf_logging.enable_progress_bar()


def _log(progress: bool, message: str) -> None:
    """Prints a build message to stderr when ``progress`` is on."""
    if progress:
        print(f"[rlhf.task] {message}", file=sys.stderr, flush=True)


def _build_into(out: Path, settings: TinyModelSettings, progress: bool) -> None:
    """Trains the model and writes model, tokenizer and ``task.json`` into ``out``."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    started = time.perf_counter()
    tokenizer = build_tokenizer(model_max_length=settings.max_position_embeddings)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_heads,
        head_dim=settings.hidden_size // settings.num_heads,
        max_position_embeddings=settings.max_position_embeddings,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
        attn_implementation="eager",  # faster than sdpa for this size on a CPU (about 2x)
    )
    _log(progress, f"building the tiny model ({settings.steps} SFT steps) into {out.parent}")
    with torch.random.fork_rng(devices=[]):  # leaves the caller's torch RNG as it was
        torch.manual_seed(settings.seed)
        model = LlamaForCausalLM(config)
        final_loss = _train_sft(model, tokenizer, settings, progress)
        model.eval()
        evaluation = _evaluate(model, tokenizer, settings)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with _quiet_progress_bars(not progress):
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    task = {
        "builder_version": BUILDER_VERSION,
        "settings": dataclasses.asdict(settings),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_sft_loss": final_loss,
        "build_seconds": round(time.perf_counter() - started, 1),
        **evaluation,
    }
    (out / TASK_FILE).write_text(json.dumps(task, indent=2) + "\n")
    _make_readable(out)
    _log(
        progress,
        f"built in {task['build_seconds']} s: SFT loss {final_loss:.3f}, mean reward "
        f"{evaluation['sampled']['mean_reward']:.3f} (sampled), "
        f"{evaluation['greedy']['mean_reward']:.3f} (greedy)",
    )


def _sft_examples(
    tokenizer: PreTrainedTokenizerBase, settings: TinyModelSettings
) -> list[tuple[list[int], int]]:
    """(token ids of ``<bos> prompt completion <eos>``, number of prompt tokens) per example."""
    pairs = make_sft_corpus(settings.steps * settings.batch_size, settings.seed)
    prompts = tokenizer([p for p, _ in pairs])["input_ids"]
    joined = tokenizer([f"{p} {c}" for p, c in pairs])["input_ids"]
    examples = []
    for prompt_ids, ids in zip(prompts, joined, strict=True):
        if ids[: len(prompt_ids)] != prompt_ids:
            raise AssertionError(f"tokenizer: the prompt's tokens change when joined: {ids}")
        examples.append((ids + [tokenizer.eos_token_id], len(prompt_ids)))
    return examples


def _collate(
    examples: list[tuple[list[int], int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels``, each [B, T].

    Labels are masked by position: prompt tokens and padding get ``IGNORE``; the completion and
    its EOS keep their ids (masking by id would also hide an EOS equal to the pad id).
    """
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)
    for row, (ids, prompt_len) in enumerate(examples):
        tokens = torch.tensor(ids, dtype=torch.long)
        input_ids[row, : len(ids)] = tokens
        attention_mask[row, : len(ids)] = 1
        labels[row, prompt_len : len(ids)] = tokens[prompt_len:]
    return input_ids, attention_mask, labels


def _lr_factor(step: int, settings: TinyModelSettings) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio`` at the last step."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    span = max(1, settings.steps - settings.warmup_steps)
    progress = min(1.0, (step - settings.warmup_steps) / span)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return settings.min_lr_ratio + (1.0 - settings.min_lr_ratio) * cosine


def _train_sft(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    settings: TinyModelSettings,
    progress: bool,
) -> float:
    """One pass over a fresh corpus, in a fixed order; returns the mean loss of the last 20 steps."""
    examples = _sft_examples(tokenizer, settings)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=settings.learning_rate,
        betas=(0.9, 0.95),
        weight_decay=settings.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, settings))
    model.train()
    started, recent = time.perf_counter(), []
    for step in range(settings.steps):
        batch = examples[step * settings.batch_size : (step + 1) * settings.batch_size]
        input_ids, attention_mask, labels = _collate(batch, tokenizer.pad_token_id)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        recent = [*recent[-19:], loss.item()]
        if (step + 1) % 100 == 0 or step + 1 == settings.steps:
            elapsed = time.perf_counter() - started
            _log(progress, f"SFT step {step + 1}/{settings.steps} loss {loss.item():.3f} "
                 f"({elapsed:.0f} s)")  # fmt: skip
    return round(statistics.mean(recent), 4)


def generate_completions(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    do_sample: bool,
    seed: int = 0,
) -> list[tuple[str, bool]]:
    """(completion text, whether it ended with EOS) per prompt, with ``model.generate``.

    Sampling is plain temperature 1 (no top-k or top-p), as vLLM samples by default.
    """
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    length = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (length - len(ids)) + ids for ids in encoded])
    starts = torch.tensor([[length - len(ids)] for ids in encoded])
    attention_mask = (torch.arange(length) >= starts).long()
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
        if do_sample
        else {"do_sample": False}
    )
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad,
            **sampling,
        )
    results = []
    for row in output[:, length:].tolist():
        finished = tokenizer.eos_token_id in row
        tokens = row[: row.index(tokenizer.eos_token_id)] if finished else row
        results.append((tokenizer.decode(tokens, skip_special_tokens=True), finished))
    return results


def _evaluate(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, settings: TinyModelSettings
) -> dict[str, Any]:
    """Reward statistics of greedy and sampled completions on eval prompts, plus examples."""
    prompts = make_prompts(settings.eval_prompts, settings.seed, split="eval")
    report: dict[str, Any] = {"eval_prompts": len(prompts)}
    for name, do_sample in (("greedy", False), ("sampled", True)):
        completions = generate_completions(
            model, tokenizer, prompts, settings.eval_max_new_tokens, do_sample, settings.seed
        )
        rewards = [sentiment_score(text) for text, _ in completions]
        report[name] = {
            "mean_reward": round(statistics.mean(rewards), 4),
            "std_reward": round(statistics.pstdev(rewards), 4),
            "finished_fraction": sum(done for _, done in completions) / len(completions),
            "mean_words": statistics.mean(len(text.split()) for text, _ in completions),
            "examples": [
                {"prompt": p, "completion": text, "reward": round(r, 4)}
                for p, (text, _), r in list(zip(prompts, completions, rewards, strict=True))[:5]
            ],
        }
    return report

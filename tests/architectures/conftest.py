"""Fixtures of the architecture tests: tiny random GPT-2, Qwen2, Llama and Mistral models with
trained byte-level BPE tokenizers (see tests/models/architectures.py), built once per session.

``arch`` is parametrized over the architectures; pytest runs one architecture's tests together,
so a per-architecture engine fixture holds one engine at a time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.models.architectures import ARCHITECTURES, build_architecture, build_reward_model

NAMES = list(ARCHITECTURES)


@pytest.fixture(scope="session")
def build_arch(tmp_path_factory):
    """``build_arch(name)``: the directory of architecture ``name``, built on first use."""
    root = tmp_path_factory.mktemp("architectures")
    built: dict[str, Path] = {}

    def build(name: str) -> Path:
        if name not in built:
            built[name] = build_architecture(name, root / name)
        return built[name]

    return build


@pytest.fixture(scope="session", params=NAMES)
def arch(request, build_arch) -> tuple[str, Path]:
    """(name, model directory) of each architecture in turn."""
    return request.param, build_arch(request.param)


@pytest.fixture(scope="session")
def qwen2_reward_model(tmp_path_factory) -> Path:
    """A Qwen2 sequence-classification reward model with its own tokenizer and ChatML."""
    return build_reward_model("qwen2", tmp_path_factory.mktemp("reward") / "qwen2")


def text_records(n: int = 6, k: int = 2):
    """``n`` plain-text preference records of the embedded task's text, K responses each."""
    from rlhf.data.records import PreferenceRecord
    from rlhf.task import make_prompts, make_sft_corpus

    prompts = make_prompts(n, seed=3, split="train")
    completions = [c for _, c in make_sft_corpus(n * k, seed=4)]
    return [
        PreferenceRecord(
            i + 1,
            prompt,
            [" " + c for c in completions[i * k : (i + 1) * k]],
            tuple(f"responses[{j}]" for j in range(k)),
        )
        for i, prompt in enumerate(prompts)
    ]


def chat_records(n: int = 6, k: int = 2):
    """The same texts as chat messages: the prompt as a user turn, responses as assistant ones."""
    from rlhf.data.records import PreferenceRecord

    return [
        PreferenceRecord(
            r.source_row,
            [{"role": "user", "content": r.prompt}],
            [[{"role": "assistant", "content": text.strip()}] for text in r.responses],
            r.fields,
        )
        for r in text_records(n, k)
    ]


def tokenized(tokenizer, records, max_length: int = 128):
    """``records`` tokenized into a preference table; returns (table, report)."""
    from rlhf.data import DataReport
    from rlhf.data.tokenize import tokenize_preferences

    report = DataReport(path="records")
    report.rows_read = len(records)
    table = tokenize_preferences(
        records, tokenizer, report, max_prompt_length=max_length // 2, max_length=max_length
    )
    return table, report

"""Fixtures: the word-level test tokenizer (plain and with a chat template), JSONL writing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from .helpers import CHAT_TEMPLATE, build_tokenizer


@pytest.fixture(scope="session")
def _base_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture
def tokenizer(_base_tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    return _base_tokenizer


@pytest.fixture
def chat_tokenizer() -> PreTrainedTokenizerFast:
    tok = build_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """Writes rows (dicts become JSON, str and bytes are written as they are) one per line."""

    def write(rows: list, name: str = "prefs.jsonl") -> Path:
        path = tmp_path / name
        lines = []
        for row in rows:
            if isinstance(row, dict):
                row = json.dumps(row)
            lines.append(row if isinstance(row, bytes) else row.encode())
        path.write_bytes(b"\n".join(lines) + b"\n")
        return path

    return write

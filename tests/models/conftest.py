"""Fixtures of the model tests: the tiny random Llama, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from .tiny_llama import build_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a word-level tokenizer (see tiny_llama.py)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))

"""The embedded default: a controlled-sentiment task and a tiny model, built from a seed.

A miniature of the DPO paper's IMDb experiment that runs on a laptop CPU with nothing
downloaded: neutral movie-review prefixes as prompts (``make_prompts``), a lexicon sentiment
classifier as the ground-truth reward (``sentiment_reward``, the framework's reward-function
interface), and a word-level Llama trained by SFT on mixed-sentiment reviews
(``build_tiny_model``), saved in Hugging Face format.

``import rlhf.task`` stays light (no torch or transformers) so that the reward can be loaded
anywhere; the builders import them when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rlhf.task.grammar import make_prompts, make_sft_corpus
from rlhf.task.reward import sentiment_reward, sentiment_score

if TYPE_CHECKING:
    from rlhf.task.model import build_tiny_model, default_cache_dir
    from rlhf.task.tokenizer import build_tokenizer

__all__ = [
    "build_tiny_model",
    "build_tokenizer",
    "default_cache_dir",
    "make_prompts",
    "make_sft_corpus",
    "sentiment_reward",
    "sentiment_score",
]

_LAZY = {
    "build_tiny_model": "rlhf.task.model",
    "default_cache_dir": "rlhf.task.model",
    "build_tokenizer": "rlhf.task.tokenizer",
}


def __getattr__(name: str) -> Any:
    """Imports the heavy builders on first access (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'rlhf.task' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)

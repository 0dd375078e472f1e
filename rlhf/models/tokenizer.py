"""Loading a model's tokenizer: a clear error when there is none, and a pad token always.

Every model directory the framework trains, samples or scores needs its tokenizer beside it
(``tokenizer.save_pretrained(directory)``). Transformers does not always say when it is
missing: for some architectures (GPT-2) it builds an empty tokenizer from the model's config.

Padding is masked by position everywhere (never by token id), so any id can fill the padding;
a tokenizer without a pad token (GPT-2, Llama 3, Mistral) pads with its EOS, as is usual.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rlhf.config import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class MissingTokenizerError(ConfigError):
    """A model directory (or hub name) without a usable tokenizer."""


def load_tokenizer(
    path: str | Path, trust_remote_code: bool = False, key: str = "model.path"
) -> PreTrainedTokenizerBase:
    """The tokenizer saved with the model at ``path``, its pad token set (EOS when it has none).

    ``key`` names the config key of ``path`` in errors (``reward.model`` for a reward model).
    Raises :class:`MissingTokenizerError` when ``path`` holds no tokenizer, or one without a
    vocabulary or an EOS token.
    """
    from transformers import AutoTokenizer

    save_hint = (
        f"save the model's tokenizer into it (tokenizer.save_pretrained('{path}')); "
        "a tokenizer.json or the vocabulary files of its tokenizer class are needed"
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as error:
        if Path(path).is_dir():
            raise MissingTokenizerError(
                f"{key}: {path} holds no tokenizer that loads ({_first_line(error)}); {save_hint}"
            ) from None
        raise
    if len(tokenizer) <= len(tokenizer.all_special_ids):
        raise MissingTokenizerError(
            f"{key}: {path} holds no tokenizer vocabulary (the tokenizer built from its config "
            f"has {len(tokenizer)} tokens); {save_hint}"
        )
    if tokenizer.eos_token_id is None:
        raise MissingTokenizerError(
            f"{key}: the tokenizer of {path} has no eos_token, and every response must end "
            "with one; set eos_token in its tokenizer_config.json"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__

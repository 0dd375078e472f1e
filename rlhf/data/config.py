"""The ``data`` config section: where preference data is and how it is tokenized and batched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from rlhf.config import ConfigError
from rlhf.data.formats import Format
from rlhf.data.io import SUFFIXES


@dataclass
class DataConfig:
    """Preference data settings; ``validate()`` rejects combinations that cannot work."""

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "shuffle": "training batches are always shuffled; remove it",
        "length_grouping": "set schedule.length_grouping (true by default) instead",
        "length_window": "schedule.length_grouping groups by length; remove it",
    }

    path: str = ""  # a .parquet or .jsonl file of preferences (pairs, rankings, ...)
    # the shape of its rows: auto (detected per file) | pairs | ranking | conversations | hh |
    # ultrafeedback | unpaired ({prompt, completion, label}: KTO)
    format: Format = "auto"
    rating_key: str = "overall_score"  # ultrafeedback: the field that rates a completion
    eval_path: str | None = None  # a separate eval file; or hold out eval_fraction of prompts
    eval_fraction: float = 0.0
    max_prompt_length: int = 256  # tokens, BOS included
    max_length: int = 512  # prompt + response tokens
    prompt_truncation: Literal["error", "left"] = (
        "error"  # a longer prompt: bad row, or keep its end
    )
    on_bad_row: Literal["error", "skip"] = "error"  # skip: count bad rows and report them
    ties: Literal["drop_row", "drop_response"] = "drop_row"  # equal scores in a ranking
    cache_dir: str | None = None  # where tables with reference log-probs are kept

    def validate(self) -> None:
        """Raises :class:`ConfigError` naming the key(s) at fault."""
        if not self.path:
            raise ConfigError("path is required: a .parquet or .jsonl preference file")
        for key in ("path", "eval_path"):
            value = getattr(self, key)
            if value is not None and not value.endswith(SUFFIXES):
                raise ConfigError(f"{key} {value!r} must end with one of {', '.join(SUFFIXES)}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.eval_path is not None and self.eval_fraction > 0:
            raise ConfigError("set either eval_path or eval_fraction, not both")
        if self.max_prompt_length < 1:
            raise ConfigError(f"max_prompt_length must be at least 1, got {self.max_prompt_length}")
        if self.max_length <= self.max_prompt_length:
            raise ConfigError(
                f"max_length ({self.max_length}) must exceed max_prompt_length "
                f"({self.max_prompt_length}) to leave room for a response"
            )

    def table_settings(self) -> dict[str, Any]:
        """The settings a tokenized table depends on (part of its cache key)."""
        return {
            "max_prompt_length": self.max_prompt_length,
            "max_length": self.max_length,
            "prompt_truncation": self.prompt_truncation,
            "on_bad_row": self.on_bad_row,
            "ties": self.ties,
            "format": self.format,
            "rating_key": self.rating_key,
        }

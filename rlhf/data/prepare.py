"""Reading and tokenizing a preference file in one call, as a job's driver does."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from rlhf.data.config import DataConfig
from rlhf.data.errors import DataError, DataReport
from rlhf.data.io import read_preferences
from rlhf.data.tokenize import tokenize_preferences

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def load_preferences(
    path: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    cfg: DataConfig,
    context_length: int | None = None,
) -> tuple[pa.Table, DataReport]:
    """The tokenized preference table of ``path`` and its report; an error if no row is usable.

    ``context_length``: the model's; a longer row is a bad row (see ``tokenize_preferences``).
    """
    records, report = read_preferences(
        path,
        on_bad_row=cfg.on_bad_row,
        ties=cfg.ties,
        format=cfg.format,
        rating_key=cfg.rating_key,
    )
    table = tokenize_preferences(
        records,
        tokenizer,
        report,
        max_prompt_length=cfg.max_prompt_length,
        max_length=cfg.max_length,
        prompt_truncation=cfg.prompt_truncation,
        on_bad_row=cfg.on_bad_row,
        context_length=context_length,
    )
    if table.num_rows == 0:
        raise DataError(f"{path}: no usable rows\n{report.summary()}")
    return table, report

"""Preference data: Arrow storage, validation, tokenization, batches.

Read a file (:func:`read_preferences`), tokenize it once (:func:`tokenize_preferences`, or both
with :func:`load_preferences`), add reference log-probs (:func:`with_ref_logps`), cache the
table (:func:`cache_key`, :func:`load_cached`, :func:`save_cached`), split it
(:func:`split_by_prompt`) and batch it (:func:`batches`, :func:`collate`). Files may hold the
ecosystem's usual shapes (:mod:`rlhf.data.formats`), or unpaired feedback for KTO
(:func:`unpaired_from_pairs` makes it from pairs).

The sampling jobs' prompts: :class:`PromptsConfig`, :func:`open_prompts` (:mod:`rlhf.data.prompts`).
"""

from rlhf.data.batch import PreferenceBatch
from rlhf.data.cache import cache_key, load_cached, save_cached
from rlhf.data.config import DataConfig
from rlhf.data.errors import DataError, DataReport
from rlhf.data.io import read_preferences, unpaired_from_pairs, write_preferences
from rlhf.data.loader import batch_order, batches, collate, sequence_lengths, split_by_prompt
from rlhf.data.prepare import load_preferences
from rlhf.data.prompts import Prompt, PromptsConfig, open_prompts
from rlhf.data.records import PreferenceRecord
from rlhf.data.table import FORMAT_VERSION, num_responses, report_of, source_of, with_ref_logps
from rlhf.data.tokenize import tokenize_preferences

__all__ = [
    "FORMAT_VERSION",
    "DataConfig",
    "DataError",
    "DataReport",
    "PreferenceBatch",
    "PreferenceRecord",
    "Prompt",
    "PromptsConfig",
    "batch_order",
    "batches",
    "cache_key",
    "collate",
    "load_cached",
    "load_preferences",
    "num_responses",
    "open_prompts",
    "read_preferences",
    "report_of",
    "save_cached",
    "sequence_lengths",
    "source_of",
    "split_by_prompt",
    "tokenize_preferences",
    "unpaired_from_pairs",
    "with_ref_logps",
    "write_preferences",
]

"""Prompts for the jobs that sample (online DPO, PPO, make-data, sample): the task's or the user's.

A job's ``prompts`` section (:class:`PromptsConfig`) names them: ``path: embedded`` (the default)
draws the embedded task's review prefixes exactly as before; otherwise ``path`` is a Parquet or
JSONL file, a directory written by ``datasets.Dataset.save_to_disk`` or a Hugging Face Hub
dataset name (through the ``datasets`` library, where the network allows). Each row's ``field``
is a string or chat messages (a list of ``{role, content}``), which the tokenizer's chat template
renders with the generation prompt added. A row that is empty, not text or messages, or longer
than ``max_length`` tokens is an error naming file, row and field, or with ``on_bad_row: skip``
a counted skip (the source's :meth:`~FilePrompts.summary` says how many and why).

Held-out prompts come from ``eval_path`` or ``eval_size`` rows of ``path``. With neither set, an
online job (which samples held-out prompts every round for its ``eval/`` metrics) holds out
:data:`DEFAULT_HELD_OUT` of the file's rows (at least one, the same rows for any seed) and says
so; make-data and sample hold out nothing then.

:func:`open_prompts` returns a :class:`PromptSource`. Rounds walk through the training prompts
in a seeded shuffled order, epoch after epoch: ``for_round(round_index, count)`` is a function
of (seed, round) alone, so a resumed run continues at the same position.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from rlhf.config import ConfigError
from rlhf.data.errors import BadRow, DataError, DataReport, OnBadRow, row_kind_of
from rlhf.data.io import SUFFIXES, check_data_file, read_rows
from rlhf.data.records import Text, check_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

EMBEDDED = "embedded"
HELD_OUT_SEED = "prompts-held-out"  # eval_size holds out the same rows whatever the run's seed
DEFAULT_HELD_OUT = 0.05  # share of a prompt file an online job holds out when eval_size is unset


@dataclass
class PromptsConfig:
    """Where a job's prompts come from; ``validate()`` rejects settings that cannot work."""

    # embedded (the task's prompts) | a .parquet or .jsonl file | a save_to_disk directory |
    # a Hugging Face Hub dataset name
    path: str = EMBEDDED
    field: str = "prompt"  # the column of each prompt: a string or chat messages
    split: str = "train"  # the split of a dataset directory or hub dataset with several
    eval_path: str | None = None  # held-out prompts, in any form path takes
    eval_split: str = "test"  # the split of eval_path, when it has several
    # or hold out this many of path's prompts (the same rows for any seed); unset: 5% of them in
    # an online job (at least 1), none in make-data and sample; 0: none
    eval_size: int | None = None
    max_length: int = 256  # tokens of a prompt as the model sees it (template, BOS included)
    on_bad_row: Literal["error", "skip"] = "error"  # skip: count bad rows and report them

    def validate(self) -> None:
        """Raises :class:`ConfigError` naming the key at fault."""
        if not self.path:
            raise ConfigError(
                "path is required: embedded, a .parquet or .jsonl file, a dataset directory "
                "or a hub dataset name"
            )
        if self.path == EMBEDDED:
            changed = [
                key
                for key, default in (("field", "prompt"), ("eval_path", None), ("eval_size", None))
                if getattr(self, key) != default
            ]
            if changed:
                raise ConfigError(
                    f"{changed[0]} applies to a prompt file, but path is 'embedded' (the task's "
                    "own prompts, with their own held-out set); set path to your prompts"
                )
        if self.eval_size is not None and self.eval_size < 0:
            raise ConfigError(f"eval_size must be at least 0, got {self.eval_size}")
        if self.eval_path is not None and self.eval_size:
            raise ConfigError("set either eval_path or eval_size, not both")
        if self.max_length < 1:
            raise ConfigError(f"max_length must be at least 1, got {self.max_length}")


@dataclass(frozen=True)
class Prompt:
    """One prompt: as the user gave it, and as the model is given it."""

    given: Text  # as in the data: a string, or chat messages (what a reward function receives)
    # what the sampler is given: the string, or the chat template's rendering (less a BOS the
    # template wrote, where the tokenizer adds it: a sampler tokenizes ``text`` into ``ids``)
    text: str
    ids: list[int] | None = None  # the tokens the model sees (None: not tokenized)
    source_row: int | None = None  # JSONL: 1-based line; otherwise 0-based row; None: embedded


class PromptSource(Protocol):
    """Prompts for a job: rounds of training prompts and a held-out set."""

    def for_round(self, round_index: int, count: int) -> list[Prompt]:
        """The ``count`` training prompts of round ``round_index`` (a function of seed, round)."""
        ...

    def first(self, count: int) -> list[Prompt]:
        """Up to ``count`` distinct training prompts (all of them when there are fewer)."""
        ...

    def held_out(self, count: int) -> list[Prompt]:
        """Up to ``count`` held-out prompts; a :class:`DataError` when there are none."""
        ...

    @property
    def has_held_out(self) -> bool:
        """Whether :meth:`held_out` has prompts to give."""
        ...

    def summary(self) -> str:
        """What loading read, kept and skipped (empty for the embedded prompts)."""
        ...


def open_prompts(
    cfg: PromptsConfig,
    seed: int,
    tokenizer: PreTrainedTokenizerBase | None = None,
    needs_held_out: bool = False,
) -> PromptSource:
    """The prompt source ``cfg`` names; its order is seeded by ``seed`` (the run's seed).

    A prompt file needs the policy's ``tokenizer`` (for chat templates and ``max_length``); the
    embedded prompts are tokenized too when one is given. ``needs_held_out`` (the online jobs):
    a file without ``eval_path`` or ``eval_size`` holds out :data:`DEFAULT_HELD_OUT` of its rows.
    """
    if cfg.path == EMBEDDED:
        return EmbeddedPrompts(seed, tokenizer)
    if tokenizer is None:
        raise ValueError("open_prompts: a prompt file needs the model's tokenizer")
    train, train_report = load_prompts(
        cfg.path, cfg.split, cfg.field, tokenizer, cfg.max_length, cfg.on_bad_row, "path"
    )
    reports = [train_report]
    held: list[Prompt] = []
    if cfg.eval_path is not None:
        held, eval_report = load_prompts(
            cfg.eval_path,
            cfg.eval_split,
            cfg.field,
            tokenizer,
            cfg.max_length,
            cfg.on_bad_row,
            "eval_path",
        )
        reports.append(eval_report)
        _check_same_kind(train[0], held[0], cfg.eval_path)
    elif cfg.eval_size:
        train, held = hold_out(train, cfg.eval_size, cfg.path)
    elif cfg.eval_size is None and needs_held_out:
        train, held = hold_out(train, default_held_out_size(len(train), cfg.path), cfg.path)
        note = (
            f"{cfg.path}: held out {len(held)} of {len(train) + len(held)} prompts for the eval/ "
            f"metrics ({DEFAULT_HELD_OUT:.0%}, at least 1, as prompts.eval_size and "
            "prompts.eval_path are unset)"
        )
        return FilePrompts(train, held, seed, reports, note)
    return FilePrompts(train, held, seed, reports)


def default_held_out_size(rows: int, path: str) -> int:
    """How many of ``rows`` prompts an online job holds out when the config does not say."""
    if rows < 2:
        raise DataError(
            f"{path}: {rows} usable prompt, and an online job holds out prompts for its eval/ "
            "metrics (prompts.eval_size unset: 5%, at least 1); add prompts or give "
            "prompts.eval_path"
        )
    return max(1, round(rows * DEFAULT_HELD_OUT))


def _check_same_kind(train: Prompt, held: Prompt, eval_path: str) -> None:
    """Training and held-out prompts are both text or both chat messages (as a reward gets)."""
    kinds = ("plain text", "chat messages")
    chat, held_chat = isinstance(train.given, list), isinstance(held.given, list)
    if chat != held_chat:
        raise DataError(
            f"prompts.eval_path: {eval_path} holds {kinds[held_chat]} and prompts.path "
            f"{kinds[chat]}; give held-out prompts of the same kind"
        )


def job_prompts(
    cfg: PromptsConfig,
    seed: int,
    model_path: str,
    trust_remote_code: bool = False,
    tokenizer: PreTrainedTokenizerBase | None = None,
    needs_held_out: bool = False,
) -> PromptSource:
    """A job's prompt source, before any actor starts: bad data fails in seconds.

    Loads the tokenizer of the model at ``model_path`` for a prompt file (unless ``tokenizer``
    is given) and prints what loading skipped and held out (``needs_held_out``: as
    :func:`open_prompts`).
    """
    if tokenizer is None and cfg.path != EMBEDDED:
        from rlhf.models.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(model_path, trust_remote_code)
    source = open_prompts(cfg, seed, tokenizer, needs_held_out)
    if source.summary():
        print(source.summary())
    return source


def draw_prompts(
    source: PromptSource, count: int, split: Literal["train", "eval"] | None = None
) -> list[Prompt]:
    """Up to ``count`` prompts for a one-off job (make-data, sample): ``"train"`` the first of
    the training prompts, ``"eval"`` the held-out ones, None the held-out ones where there are
    some and else the training ones."""
    if split == "eval" or (split is None and source.has_held_out):
        return source.held_out(count)
    return source.first(count)


class EmbeddedPrompts:
    """The embedded task's prompts (``rlhf.task.make_prompts``), in the order jobs always drew
    them: round r takes prompts ``r * count`` to ``(r + 1) * count - 1`` of one long list."""

    def __init__(self, seed: int, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        self.seed = seed
        self.tokenizer = tokenizer
        self._train: list[str] = []

    def for_round(self, round_index: int, count: int) -> list[Prompt]:
        """Prompts ``round_index * count`` onwards of the task's training prompts."""
        end = (round_index + 1) * count
        if len(self._train) < end:  # make_prompts(n) is a prefix of make_prompts(m > n)
            from rlhf.task import make_prompts

            self._train = make_prompts(end, seed=self.seed, split="train")
        return self._prompts(self._train[round_index * count : end])

    def first(self, count: int) -> list[Prompt]:
        """The task's first ``count`` training prompts."""
        return self.for_round(0, count)

    def held_out(self, count: int) -> list[Prompt]:
        """The task's first ``count`` held-out (eval split) prompts."""
        from rlhf.task import make_prompts

        return self._prompts(make_prompts(count, seed=self.seed, split="eval"))

    @property
    def has_held_out(self) -> bool:
        """The task has a held-out split."""
        return True

    def summary(self) -> str:
        """Nothing to report: the grammar makes no bad rows."""
        return ""

    def _prompts(self, texts: list[str]) -> list[Prompt]:
        if self.tokenizer is None:
            return [Prompt(text, text) for text in texts]
        ids = self.tokenizer(texts)["input_ids"] if texts else []
        return [Prompt(text, text, list(i)) for text, i in zip(texts, ids, strict=True)]


class FilePrompts:
    """A user's prompts: rounds walk the training prompts in a seeded shuffled order, a new
    order each epoch, as many epochs as the rounds need."""

    def __init__(
        self,
        train: Sequence[Prompt],
        held: Sequence[Prompt],
        seed: int,
        reports: Sequence[DataReport] = (),
        note: str = "",
    ) -> None:
        if not train:
            raise DataError("no training prompts")
        self.train = list(train)
        self.held = list(held)
        self.seed = seed
        self.reports = list(reports)
        self.note = note  # how the held-out prompts were chosen, where the config did not say

    def for_round(self, round_index: int, count: int) -> list[Prompt]:
        """Positions ``round_index * count`` onwards of the endless walk through the epochs."""
        n = len(self.train)
        positions = range(round_index * count, (round_index + 1) * count)
        return [self.train[self._order(p // n)[p % n]] for p in positions]

    def first(self, count: int) -> list[Prompt]:
        """The first ``count`` prompts of the walk, at most one epoch (no prompt twice)."""
        return self.for_round(0, min(count, len(self.train)))

    def held_out(self, count: int) -> list[Prompt]:
        """The first ``count`` held-out prompts in file order (all of them if fewer)."""
        if not self.held:
            raise DataError(
                "this job samples held-out prompts, and there are none (prompts.eval_size is 0): "
                "set prompts.eval_path (a file of them) or prompts.eval_size (rows of "
                "prompts.path held out), or leave both unset (an online job then holds out 5%)"
            )
        return self.held[:count]

    @property
    def has_held_out(self) -> bool:
        """Whether eval_path or eval_size gave held-out prompts."""
        return bool(self.held)

    def summary(self) -> str:
        """Each file's report: rows read, kept and skipped (with the first examples), and how
        the held-out prompts were chosen where the config did not say."""
        lines = [report.summary() for report in self.reports]
        return "\n".join([*lines, self.note] if self.note else lines)

    def _order(self, epoch: int) -> list[int]:
        return _epoch_order(self.seed, epoch, len(self.train))


@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """The order of ``n`` prompts in ``epoch``: a permutation seeded by (seed, epoch) alone."""
    order = list(range(n))
    random.Random(f"prompts-{seed}-{epoch}").shuffle(order)
    return order


def hold_out(prompts: Sequence[Prompt], size: int, path: str) -> tuple[list[Prompt], list[Prompt]]:
    """``size`` prompts held out (the same rows for every run seed), both parts in file order."""
    if size >= len(prompts):
        raise DataError(
            f"{path}: prompts.eval_size {size} leaves no training prompts ({len(prompts)} "
            "usable rows); lower it or give prompts.eval_path"
        )
    order = list(range(len(prompts)))
    random.Random(HELD_OUT_SEED).shuffle(order)
    held = set(order[:size])
    return (
        [p for i, p in enumerate(prompts) if i not in held],
        [p for i, p in enumerate(prompts) if i in held],
    )


# ---- reading and checking ------------------------------------------------------------------


def load_prompts(
    path: str,
    split: str,
    field: str,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    on_bad_row: OnBadRow = "error",
    key: str = "path",
) -> tuple[list[Prompt], DataReport]:
    """The checked, rendered prompts of ``path`` and a report of what was skipped.

    ``key`` is the config key that named ``path`` (for errors). Raises :class:`DataError` for a
    bad row (unless ``on_bad_row="skip"``), a missing ``field`` column, chat messages with a
    tokenizer that has no chat template, or no usable prompt at all.
    """
    columns, rows = _read(path, split, key)
    if field not in columns:
        raise DataError(
            f"{path}: no {field!r} column (columns: {', '.join(columns) or 'none'}); set "
            "prompts.field to the column that holds the prompts"
        )
    report = DataReport(path, row_kind_of(path))
    prompts: list[Prompt] = []
    for source_row, raw in rows:
        report.rows_read += 1
        try:
            if isinstance(raw, BadRow):
                raise raw
            given = check_text(raw.get(field), field, chat=None)
            chat = isinstance(given, list)
            if prompts and chat != isinstance(prompts[0].given, list):
                kinds = ("plain text", "chat messages")
                raise BadRow(
                    "mixed kinds",
                    field,
                    f"{kinds[chat]}, but the first prompt is {kinds[not chat]}; a prompt set "
                    "holds one kind",
                )
            prompts.append(_render(given, source_row, field, tokenizer, max_length, report))
        except BadRow as error:
            report.bad_row(source_row, error, on_bad_row)
    report.rows_kept = len(prompts)
    if not prompts:
        raise DataError(f"{path}: no usable prompts (prompts.{key})\n{report.summary()}")
    return prompts, report


def _render(
    given: Text,
    row: int,
    field: str,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    report: DataReport,
) -> Prompt:
    """The prompt the model sees, tokenized as the sampler will; BadRow when too long."""
    if isinstance(given, str):
        text, special = given, True  # plain text: the tokenizer adds its BOS (as vLLM does)
    else:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(
                f"{report.where(row, field)}: chat messages need a tokenizer with a chat "
                "template, and this tokenizer has none; give the model directory a chat "
                "template (tokenizer_config.json 'chat_template') or give prompts as plain text"
            )
        try:
            text = tokenizer.apply_chat_template(given, tokenize=False, add_generation_prompt=True)
        except Exception as error:  # jinja raises its own error types (and templates raise too)
            raise BadRow("chat template", field, f"the chat template failed: {error}") from None
        special = False  # the template wrote the special tokens it wants
    ids = list(tokenizer(text, add_special_tokens=special)["input_ids"])
    if not special:
        text = _sampler_text(tokenizer, text, ids)
    if len(ids) > max_length:
        raise BadRow(
            "prompt too long",
            field,
            f"prompt is {len(ids)} tokens, more than prompts.max_length={max_length} "
            "(raise it, or skip such rows with prompts.on_bad_row=skip)",
        )
    return Prompt(given, text, ids, row)


def _sampler_text(tokenizer: PreTrainedTokenizerBase, rendered: str, ids: list[int]) -> str:
    """The text that a sampler adding the tokenizer's special tokens (as vLLM does with a
    string prompt) turns into ``ids``: a chat template that writes the BOS itself would
    otherwise get a second one. ``rendered`` itself where dropping its BOS does not give that."""
    bos = tokenizer.bos_token
    if bos and rendered.startswith(bos):
        rest = rendered[len(bos) :]
        if list(tokenizer(rest)["input_ids"]) == ids:
            return rest
    return rendered


Rows = Iterator[tuple[int, "dict[str, Any] | BadRow"]]


def _read(path: str, split: str, key: str) -> tuple[list[str], Rows]:
    """Columns and rows of a prompt file, a dataset directory or a hub dataset."""
    if path.endswith(SUFFIXES):
        try:
            check_data_file(path)
        except DataError as error:
            raise DataError(f"prompts.{key}: {error}") from None
        return read_rows(path)
    if Path(path).is_dir():
        return _dataset_rows(path, split, key, local=True)
    if Path(path).exists() or path.startswith(("/", ".", "~")):
        raise DataError(
            f"prompts.{key}: {path}: not a prompt file (.parquet, .jsonl) nor a directory "
            "written by datasets.Dataset.save_to_disk"
        )
    return _dataset_rows(path, split, key, local=False)


def _dataset_rows(path: str, split: str, key: str, local: bool) -> tuple[list[str], Rows]:
    import datasets  # a dependency of this package; slow to import, so only here

    try:
        data = datasets.load_from_disk(path) if local else datasets.load_dataset(path, split=split)
    except ConnectionError as error:  # offline (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE) or no network
        raise DataError(
            f"prompts.{key}: {path} is not a local file or directory, and the Hugging Face Hub "
            f"cannot be reached for a dataset of that name ({error}); on a machine with the "
            f"network, save it with datasets.load_dataset({path!r}).save_to_disk(DIR) and set "
            f"prompts.{key} to DIR, or give a .parquet or .jsonl file"
        ) from None
    except Exception as error:  # the library's own errors: missing files, no such dataset
        what = "not a dataset directory" if local else "neither a local file nor a hub dataset"
        raise DataError(
            f"prompts.{key}: {path} is {what} the datasets library can load "
            f"({type(error).__name__}: {error}); give a .parquet or .jsonl file"
        ) from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DataError(
                f"prompts.{key}: {path} has splits {', '.join(data)}, not {split!r}; set "
                f"prompts.{'split' if key == 'path' else 'eval_split'} to one of them"
            )
        data = data[split]
    return list(data.column_names), enumerate(iter(data))

"""The steps preference training shares between offline and online DPO.

Tokenized preference tables get their reference log-probs (once, cached), then the trainer group
takes optimizer steps over them, evaluates, and checkpoints; the run directory keeps the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pyarrow as pa
import ray

from rlhf.algorithms import UnknownNameError, get_preference_loss, preference_losses
from rlhf.config import ConfigError
from rlhf.data.loader import batches
from rlhf.data.table import is_unpaired, num_responses, with_ref_logps
from rlhf.driver.metrics import merge_rank_metrics
from rlhf.driver.reference import response_logps
from rlhf.driver.retry import bounded_get, ranks
from rlhf.schema import EngineConfig


@dataclass
class LossConfig:
    """Which preference loss (a registry name or ``package.module:function``, or a weighted sum
    of them as a mapping, e.g. ``{sigmoid: 1.0, sft: 0.2}``) and its options."""

    name: str | dict[str, float] = "sigmoid"  # sigmoid | ipo | simpo | ... (`rlhf plugins`)
    beta: float = 0.1
    options: dict[str, Any] = field(default_factory=dict)  # e.g. {label_smoothing: 0.1}

    def validate(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"beta must be positive, got {self.beta}")
        try:
            loss = get_preference_loss(self.name)
        except (UnknownNameError, ImportError, TypeError, ValueError) as error:
            raise ConfigError(f"name: {error}") from None
        check_loss_options(loss, self.beta, self.options)


def check_loss_options(loss, beta: float, options: dict[str, Any]) -> None:
    """Raises ConfigError unless the registered ``loss`` takes ``options`` and runs with them.

    The options are bound to the loss's signature (an unknown name is an error that lists the
    ones it has), then the loss runs once on a dummy batch of one pair, so a value it refuses
    (``label_smoothing: 0.7``) fails at config load, not in the trainer.
    """
    import inspect

    import torch

    from rlhf.algorithms import RankedLogps

    fixed = ("logps", "beta")
    try:
        signature = inspect.signature(loss.fn)
    except (TypeError, ValueError):  # no signature to read: the dummy run still checks
        signature = None
    if signature is not None:
        params = signature.parameters.values()
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
        known = [p.name for p in params if p.name not in fixed and p.kind is not p.VAR_KEYWORD]
        unknown = sorted(set(options) - set(known))
        if unknown and not takes_any:
            raise ConfigError(
                f"options: loss {loss.name!r} takes no option {unknown[0]!r}; its options: "
                + (", ".join(known) or "none")
            )
    zeros = torch.zeros(2, 2)
    labels = torch.tensor([True, False]) if loss.metadata["unpaired"] else None
    dummy = RankedLogps(policy=zeros, reference=zeros, lengths=torch.ones(2, 2), labels=labels)
    try:
        loss(dummy, beta, **options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"options {options} do not fit loss {loss.name!r}: {error}") from None


DATA_KINDS = {
    "pairs": "pairs {prompt, chosen, rejected}",
    "ranking": "rankings of K > 2 responses",
    "unpaired": "unpaired feedback {prompt, completion, label}",
}


def check_loss_data(loss, kind: str, where: str) -> None:
    """Raises ConfigError unless the registered ``loss`` reads data of ``kind`` ("pairs",
    "ranking" or "unpaired"; ``where`` names what holds it: a data file, a format or a
    strategy), as its registry metadata says: ``unpaired`` losses (KTO) read unpaired feedback
    only, every other loss preferences only, and ``ranking: false`` losses pairs only.
    """
    if kind not in DATA_KINDS:
        raise ValueError(f"kind must be one of {', '.join(DATA_KINDS)}, got {kind!r}")
    unpaired = loss.metadata["unpaired"]
    if unpaired and kind != "unpaired":
        raise ConfigError(
            f"loss.name: {loss.name!r} trains on {DATA_KINDS['unpaired']}, but {where} holds "
            f"{DATA_KINDS[kind]}; offline DPO reads such feedback from data.path "
            "(rlhf.data.unpaired_from_pairs converts pairs: chosen -> label true, rejected -> "
            "false), otherwise choose a loss on preferences"
        )
    if not unpaired and kind == "unpaired":
        raise ConfigError(
            f"loss.name: {loss.name!r} trains on preferences, but {where} holds "
            f"{DATA_KINDS['unpaired']}; choose a loss on unpaired feedback (kto) or give pairs"
        )
    if kind == "ranking" and not loss.metadata["ranking"]:
        ranking = ", ".join(
            name
            for name in preference_losses.names()
            if preference_losses.get(name).metadata["ranking"]
        )
        raise ConfigError(
            f"loss.name: {loss.name!r} takes pairs only, but {where} holds "
            f"{DATA_KINDS['ranking']}; choose a loss with a ranking form ({ranking}) or pairs"
        )


def check_loss_strategy(loss_name: str | dict[str, float], strategy: str, responses: int) -> None:
    """Raises ConfigError unless the loss reads what the pair strategy ``strategy`` builds from
    ``responses`` sampled responses per prompt (online DPO): rankings of K > 2 from a strategy
    registered ``ranking=True``, else pairs."""
    from rlhf.data.strategies import get_pair_strategy

    ranking = get_pair_strategy(strategy).metadata.get("ranking", False) and responses > 2
    where = f"rounds.strategy {strategy!r} (with {responses} responses per prompt)"
    check_loss_data(get_preference_loss(loss_name), "ranking" if ranking else "pairs", where)


def table_kind(table: pa.Table) -> str:
    """What a tokenized preference table holds: "unpaired", "ranking" (K > 2) or "pairs"."""
    if is_unpaired(table):
        return "unpaired"
    return "ranking" if num_responses(table) > 2 else "pairs"


def check_tables(cfg: Any, train: pa.Table, held_out: pa.Table | None) -> None:
    """Raises ConfigError unless ``cfg.loss`` reads the training table's rows, and the
    held-out table's: the same kind, or for a loss on unpaired feedback held-out pairs too
    (they measure whether it orders chosen over rejected)."""
    loss = get_preference_loss(cfg.loss.name)
    check_loss_data(loss, table_kind(train), f"data.path {cfg.data.path}")
    if held_out is None:
        return
    kind = table_kind(held_out)
    if loss.metadata["unpaired"] and kind == "pairs":
        return
    check_loss_data(loss, kind, f"data.eval_path {cfg.data.eval_path}")


@dataclass
class ReferenceConfig:
    """The reference model's server: vLLM, the Hugging Face model, or (``base``, online jobs
    training LoRA) the samplers' own engines scoring without the adapter, with no server of its
    own. Unset: ``base`` in an online job with ``trainer.lora.r > 0`` and adapter sync, ``vllm``
    otherwise (``rlhf.schema.reference_backend``)."""

    backend: Literal["vllm", "hf", "base"] | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)
    chunk_size: int = 512  # sequences per request

    def validate(self) -> None:
        if self.chunk_size < 1:
            raise ConfigError(f"chunk_size must be at least 1, got {self.chunk_size}")


@dataclass
class ScheduleConfig:
    """How long to train and how often to evaluate and save (in optimizer steps)."""

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "keep_checkpoints": "keep_checkpoints is a top-level key of every job (offline DPO, "
        "online DPO, PPO); set keep_checkpoints",
    }

    epochs: int = 1  # (prompts per step: trainer.micro_batch_prompts x accumulation x ranks)
    max_steps: int | None = None
    eval_every: int = 0  # 0: at the end of each epoch only
    eval_batch_size: int = 64
    save_every: int = 0  # 0: at the end of each epoch only
    length_grouping: bool = True  # batch sequences of similar length (less padding)

    def validate(self) -> None:
        for key in ("epochs", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(
                f"max_steps {self.max_steps} would train nothing: set at least 1, or null for "
                "all epochs"
            )
        for key in ("eval_every", "save_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0 (0: at the end of each epoch only)")


@dataclass
class TrainState:
    """Where the run is; saved with every checkpoint so ``--resume`` continues the same order."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of this epoch already trained on
    round: int = 0  # online DPO: rounds completed
    tokens: int = 0


def add_reference_logps(
    server, table: pa.Table, chunk_size: int, timeout_s: float | None = None
) -> pa.Table:
    """The table with a ``ref_logps`` column: one summed log-prob per response; each chunk's
    answer waited for ``timeout_s`` at most (None: no bound)."""
    k = num_responses(table)
    prompts = table.column("prompt_ids").to_pylist()
    responses = table.column("response_ids").to_pylist()
    flat_prompts = [p for p, rs in zip(prompts, responses, strict=True) for _ in rs]
    flat_responses = [r for rs in responses for r in rs]
    flat = response_logps(server, flat_prompts, flat_responses, chunk_size, timeout_s)
    return with_ref_logps(table, [flat[i * k : (i + 1) * k] for i in range(table.num_rows)])


COUNTS = ("prompts", "tokens", "tokens_per_s")  # totals and rates, not averages over prompts


def hold_table(
    group, name: str, table: pa.Table, pad_token_id: int, timeout_s: float | None = None
) -> None:
    """Hands every rank the table ``name`` (one copy in the object store, mapped by all);
    waits ``timeout_s`` at most (None: no bound) and names a rank that dies at once."""
    refs = group.call("hold_table", name, ray.put(table), pad_token_id)
    bounded_get(refs, ranks("trainer", len(refs)), timeout_s, f"handing the {name} table over")


def submit_step(group, name: str, indices: list[int]) -> list:
    """Starts one optimizer step of the whole group on rows ``indices`` of the held table
    ``name``; one ref per rank (``step_metrics`` reads them).

    Each rank collates its own shard, so a step carries row indices only. Steps submitted back
    to back run in order on every rank: the driver may submit the next step before this one
    ends.
    """
    return group.call("train_rows", name, indices)


def step_metrics(refs: list, timeout_s: float | None = None) -> dict[str, float]:
    """The global metrics of a submitted step: waits for every rank, ``timeout_s`` at most
    (None: no bound), and names a rank that dies at once (``rlhf.driver.retry.bounded_get``)."""
    answers = bounded_get(refs, ranks("trainer", len(refs)), timeout_s, "train step")
    return share_means(merge_rank_metrics(answers))


def share_means(metrics: dict[str, float]) -> dict[str, float]:
    """Metrics with each ``group/name_sum`` (a sum over some rows, per row) divided by
    ``share/name`` (the fraction of rows it sums over) into ``group/name``: the mean over those
    rows, e.g. ``rewards/desirable`` of unpaired feedback (``unpaired_metrics``). A mean with no
    rows in the step is left out."""
    result = {}
    for key, value in metrics.items():
        group, _, name = key.rpartition("/")
        if not (group and name.endswith("_sum")):
            result[key] = value
            continue
        share = metrics.get(f"share/{name[: -len('_sum')]}")
        if share is None:
            result[key] = value
        elif share > 0:
            result[f"{group}/{name[: -len('_sum')]}"] = value / share
    return result


def evaluate(
    group, name: str, table: pa.Table, batch_size: int, timeout_s: float | None = None
) -> dict[str, float]:
    """Preference metrics on the held-out table ``table``, held by the ranks as ``name`` (no
    gradient), averaged over all its prompts.

    Every batch is submitted at once; the ranks work through them while the driver waits,
    ``timeout_s`` at most for each batch (None: no bound).
    """
    order = batches(table, batch_size, seed=0, epoch=0, shuffle=False)
    pending = [(len(indices), group.call("eval_rows", name, indices)) for indices in order]
    sums: dict[str, float] = {}
    count = 0
    for prompts, refs in pending:
        answers = bounded_get(refs, ranks("trainer", len(refs)), timeout_s, "held-out eval")
        for key, value in merge_rank_metrics(answers).items():
            if key not in COUNTS:
                sums[key] = sums.get(key, 0.0) + value * prompts
        count += prompts
    return share_means({key: value / count for key, value in sums.items()}) | {"prompts": count}


def epoch_batches(
    table: pa.Table,
    batch_size: int,
    schedule: ScheduleConfig,
    seed: int,
    state: TrainState,
    shuffle: bool = True,
    shared_prompt: bool = False,
) -> Iterator[list[int]]:
    """The remaining batches of the state's epoch, in the order a fresh run would see them.

    ``shared_prompt``: the trainer packs each prompt with its responses (length grouping then
    groups by that row's length).
    """
    yield from batches(
        table,
        batch_size,
        seed,
        state.epoch,
        shuffle=shuffle,
        skip=state.batch_in_epoch,
        length_grouping=schedule.length_grouping and shuffle,
        shared_prompt=shared_prompt,
    )

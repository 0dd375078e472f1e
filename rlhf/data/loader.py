"""From the preference table to batches: deterministic order, collation, train/eval split."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from rlhf.data.batch import PreferenceBatch
from rlhf.data.table import LABEL, REF_LOGPS, num_responses


def collate(table: pa.Table, pad_token_id: int) -> PreferenceBatch:
    """B rows of ``table`` as a right-padded batch of N = B * K prompt + response sequences.

    Masks are set by position, never by token id: ``loss_mask`` is 1 from the first response
    token through the last (EOS included), ``attention_mask`` 1 on every real token, so a pad id
    equal to EOS cannot hide the real EOS. ``ref_logps`` comes from that column when present,
    and ``labels`` from the ``label`` column of unpaired feedback.
    """
    k = num_responses(table)
    prompts = table.column("prompt_ids").to_pylist()
    responses = table.column("response_ids").to_pylist()
    sequences = [p + r for p, group in zip(prompts, responses, strict=True) for r in group]
    starts = np.repeat([len(prompt) for prompt in prompts], k)
    lengths = np.array([len(s) for s in sequences])
    input_ids = np.full((len(sequences), lengths.max()), pad_token_id, dtype=np.int64)
    for i, sequence in enumerate(sequences):
        input_ids[i, : len(sequence)] = sequence
    positions = np.arange(input_ids.shape[1])
    attention_mask = positions < lengths[:, None]
    loss_mask = attention_mask & (positions >= starts[:, None])
    ref_logps = None
    if REF_LOGPS.name in table.column_names:
        flat = pc.list_flatten(table.column(REF_LOGPS.name))
        if flat.null_count or len(flat) != len(sequences):
            raise ValueError(f"ref_logps holds {len(flat)} values for {len(sequences)} responses")
        ref_logps = torch.from_numpy(flat.to_numpy().astype(np.float32))
    labels = None
    if LABEL.name in table.column_names:
        labels = torch.tensor(table.column(LABEL.name).to_pylist(), dtype=torch.bool)
    return PreferenceBatch(
        input_ids=torch.from_numpy(input_ids),
        attention_mask=torch.from_numpy(attention_mask.astype(np.int64)),
        loss_mask=torch.from_numpy(loss_mask.astype(np.int64)),
        ref_logps=ref_logps,
        num_responses=k,
        labels=labels,
    )


def sequence_lengths(table: pa.Table, shared_prompt: bool = False) -> np.ndarray:
    """[rows] the padded length each row needs (what padding follows): its longest prompt +
    response sequence, or with ``shared_prompt`` its one row of the prompt and all responses."""
    if table.num_rows == 0:
        return np.zeros(0, dtype=np.int64)
    k = num_responses(table)
    prompt = pc.list_value_length(table.column("prompt_ids")).to_numpy()
    responses = pc.list_value_length(pc.list_flatten(table.column("response_ids")))
    per_row = responses.to_numpy().reshape(-1, k)
    return (prompt + (per_row.sum(axis=1) if shared_prompt else per_row.max(axis=1))).astype(
        np.int64
    )


def batch_order(
    table: pa.Table,
    batch_size: int,
    seed: int,
    epoch: int,
    *,
    shuffle: bool = True,
    length_grouping: bool = False,
    window: int = 50,
    drop_last: bool = False,
    shared_prompt: bool = False,
) -> list[list[int]]:
    """Every batch of one epoch as row indices; the order depends only on (seed, epoch).

    With ``length_grouping``, rows are shuffled, then each window of ``window`` batches is
    sorted by sequence length (longest first) and cut into batches, whose order within the
    window is shuffled again: batches of similar lengths, little padding, still random order.
    The length is that of the trainer's layout (``sequence_lengths`` with ``shared_prompt``).
    """
    if batch_size < 1 or window < 1:
        raise ValueError(f"batch_size ({batch_size}) and window ({window}) must be at least 1")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(table.num_rows) if shuffle else np.arange(table.num_rows)
    if not length_grouping:
        result = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    else:
        lengths = sequence_lengths(table, shared_prompt)
        result = []
        span = window * batch_size
        for lo in range(0, len(order), span):
            rows = order[lo : lo + span]
            rows = rows[np.argsort(-lengths[rows], kind="stable")]
            group = [rows[i : i + batch_size].tolist() for i in range(0, len(rows), batch_size)]
            if shuffle:
                group = [group[i] for i in rng.permutation(len(group))]
            result += group
    if drop_last:
        result = [b for b in result if len(b) == batch_size]
    return result


def batches(
    table: pa.Table,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    *,
    skip: int = 0,
    length_grouping: bool = False,
    window: int = 50,
    drop_last: bool = False,
    shared_prompt: bool = False,
) -> Iterator[list[int]]:
    """The row indices of each batch of one epoch (see :func:`batch_order`), after ``skip``.

    A resumed run passes the number of batches it already trained on this epoch as ``skip`` and
    sees exactly the rest of the same order. ``table.take(indices)`` gives the rows to
    :func:`collate`.
    """
    order = batch_order(
        table,
        batch_size,
        seed,
        epoch,
        shuffle=shuffle,
        length_grouping=length_grouping,
        window=window,
        drop_last=drop_last,
        shared_prompt=shared_prompt,
    )
    if skip < 0:
        raise ValueError(f"skip must be >= 0, got {skip}")
    yield from order[skip:]


def prompt_fraction(prompt_ids: list[int]) -> float:
    """A number in [0, 1) fixed by the prompt's token ids (a hash), for splitting by prompt."""
    digest = hashlib.blake2b(np.asarray(prompt_ids, dtype="<i4").tobytes(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2**64


def split_by_prompt(table: pa.Table, eval_fraction: float) -> tuple[pa.Table, pa.Table]:
    """(train, eval): a row is held out when its prompt's hash falls below ``eval_fraction``.

    The same prompt always lands on the same side, in every run, so no prompt is in both.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    held_out = np.array(
        [prompt_fraction(ids) < eval_fraction for ids in table.column("prompt_ids").to_pylist()],
        dtype=bool,
    )
    return table.filter(pa.array(~held_out)), table.filter(pa.array(held_out))

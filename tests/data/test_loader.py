"""Batches: masks by position, deterministic resumable order, length grouping, prompt split."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from rlhf.data import (
    DataReport,
    batch_order,
    batches,
    collate,
    sequence_lengths,
    split_by_prompt,
    with_ref_logps,
)
from rlhf.data.table import build_table

from .helpers import EOS


def _table(prompts: list[list[int]], responses: list[list[list[int]]]) -> pa.Table:
    report = DataReport("mem.jsonl", "line")
    return build_table(list(range(1, len(prompts) + 1)), prompts, responses, report)


def test_collate_masks_by_position_when_pad_is_eos():
    table = _table(
        [[1, 4, 5], [1, 4]],
        [[[6, EOS], [7, 8, EOS]], [[9, EOS], [10, EOS]]],
    )
    table = with_ref_logps(table, [[-1.0, -2.5], [-0.5, -3.0]])
    batch = collate(table, pad_token_id=EOS)
    P = EOS
    assert batch.input_ids.tolist() == [
        [1, 4, 5, 6, EOS, P],
        [1, 4, 5, 7, 8, EOS],
        [1, 4, 9, EOS, P, P],
        [1, 4, 10, EOS, P, P],
    ]
    assert batch.attention_mask.tolist() == [
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0],
    ]
    # the real EOS is in the loss (by position); the pads, equal to EOS by id, are not
    assert batch.loss_mask.tolist() == [
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1, 1],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0, 0],
    ]
    assert batch.input_ids.dtype == torch.int64 and batch.loss_mask.dtype == torch.int64
    assert batch.ref_logps.dtype == torch.float32
    assert batch.ref_logps.tolist() == [-1.0, -2.5, -0.5, -3.0]
    assert batch.num_responses == 2 and batch.num_prompts == 2
    assert batch.response_lengths.tolist() == [2, 3, 2, 2]


def test_collate_without_ref_logps_and_after_take():
    table = _table([[1, 4], [1, 5, 6]], [[[7, EOS], [8, EOS]], [[9, EOS], [10, 11, EOS]]])
    batch = collate(table.take([1]), pad_token_id=0)
    assert batch.ref_logps is None
    assert batch.input_ids.tolist() == [[1, 5, 6, 9, EOS, 0], [1, 5, 6, 10, 11, EOS]]
    assert batch.loss_mask.tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]]


def _rows(n: int) -> pa.Table:
    # row i: a prompt of i + 1 tokens, two one-token responses + EOS
    return _table([[1] * (i + 1) for i in range(n)], [[[4, EOS], [5, EOS]] for _ in range(n)])


def test_batch_order_is_deterministic_and_covers_every_row():
    table = _rows(23)
    first = batch_order(table, 4, seed=7, epoch=0)
    assert first == batch_order(table, 4, seed=7, epoch=0)
    assert first != batch_order(table, 4, seed=7, epoch=1)
    assert first != batch_order(table, 4, seed=8, epoch=0)
    assert [len(b) for b in first] == [4, 4, 4, 4, 4, 3]
    assert sorted(i for b in first for i in b) == list(range(23))
    assert batch_order(table, 4, 7, 0, drop_last=True) == first[:5]
    assert batch_order(table, 4, 7, 0, shuffle=False)[1] == [4, 5, 6, 7]


def test_resume_skips_exactly_the_batches_already_seen():
    table = _rows(23)
    full = list(batches(table, 4, seed=3, epoch=2))
    assert list(batches(table, 4, seed=3, epoch=2, skip=4)) == full[4:]
    assert list(batches(table, 4, seed=3, epoch=2, skip=6)) == []


def test_length_grouping_batches_neighbours_in_length():
    table = _rows(8)  # lengths 3..10, all distinct
    order = batch_order(table, 2, seed=0, epoch=0, length_grouping=True, window=4)
    # one window holds every row: sorted by length, cut in twos, batch order shuffled
    assert sorted(sorted(b) for b in order) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert order == batch_order(table, 2, seed=0, epoch=0, length_grouping=True, window=4)
    # windows of 2 batches: each window's 4 rows are a shuffled 4-subset, grouped by length
    grouped = batch_order(table, 2, seed=0, epoch=0, length_grouping=True, window=2)
    assert sorted(i for b in grouped for i in b) == list(range(8))


def test_length_grouping_reduces_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=200)
    table = _table([[1] * int(n) for n in lengths], [[[4, EOS], [5, EOS]]] * 200)

    def padding(order: list[list[int]]) -> int:
        return sum(2 * (max(lengths[b]) - lengths[b]).sum() for b in order)

    plain = batch_order(table, 8, seed=1, epoch=0)
    grouped = batch_order(table, 8, seed=1, epoch=0, length_grouping=True, window=5)
    assert padding(grouped) < padding(plain) / 3


def test_sequence_lengths_follow_the_trainer_layout():
    table = _table([[1, 7], [1]], [[[4, 5, EOS], [6, EOS]], [[4, EOS], [5, 6, 7, EOS]]])
    assert sequence_lengths(table).tolist() == [5, 5]  # prompt + longest response
    assert sequence_lengths(table, shared_prompt=True).tolist() == [7, 7]  # prompt + both
    lengths = np.random.default_rng(3).integers(1, 30, size=(64, 2))
    table = _table([[1]] * 64, [[[4] * int(a) + [EOS], [5] * int(b) + [EOS]] for a, b in lengths])
    row = 1 + (lengths + 1).sum(1)

    def padding(order: list[list[int]]) -> int:
        return sum((max(row[b]) - row[b]).sum() for b in order)

    by_longest = batch_order(table, 8, seed=0, epoch=0, length_grouping=True, window=8)
    by_row = batch_order(
        table, 8, seed=0, epoch=0, length_grouping=True, window=8, shared_prompt=True
    )
    assert padding(by_row) < padding(by_longest)


def test_split_by_prompt_is_disjoint_and_deterministic():
    prompts = [[1, 100 + p % 40] for p in range(300)]  # 40 prompts, each on 7 or 8 rows
    table = _table(prompts, [[[4, EOS], [5, EOS]]] * 300)
    train, held = split_by_prompt(table, 0.25)
    train_prompts = {tuple(p) for p in train.column("prompt_ids").to_pylist()}
    held_prompts = {tuple(p) for p in held.column("prompt_ids").to_pylist()}
    assert train_prompts.isdisjoint(held_prompts)
    assert train.num_rows + held.num_rows == 300
    assert 0.1 < held.num_rows / 300 < 0.4
    again, _ = split_by_prompt(table, 0.25)
    assert again.column("source_row").to_pylist() == train.column("source_row").to_pylist()
    everything, nothing = split_by_prompt(table, 0.0)
    assert everything.num_rows == 300 and nothing.num_rows == 0
    with pytest.raises(ValueError, match=r"eval_fraction must be in \[0, 1\)"):
        split_by_prompt(table, 1.0)

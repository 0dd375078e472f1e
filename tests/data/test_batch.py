"""The typed batches: sharding, and the one-row-per-prompt layout worked out by hand."""

from __future__ import annotations

import pytest
import torch

from rlhf.data.batch import PreferenceBatch, shard_bounds, share_prompts

# Prompt [1, 2] with responses [3, 4] and [5]; prompt [6] with [7], [8, 9] and [10].
IDS = torch.tensor([[1, 2, 3, 4], [1, 2, 5, 0], [6, 7, 0, 0], [6, 8, 9, 0], [6, 10, 0, 0]])
RESPONSE = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 0, 0]])
GROUP = torch.tensor([0, 0, 1, 1, 1])


def test_shard_bounds_give_the_first_ranks_the_ceiling():
    assert [shard_bounds(5, r, 3) for r in range(3)] == [(0, 2), (2, 4), (4, 5)]
    assert [shard_bounds(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]


def test_share_prompts_packs_each_prompt_once_before_its_responses():
    rows = share_prompts(IDS, RESPONSE, GROUP)
    assert rows.input_ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    # Each response continues from the prompt's end, as in its own sequence.
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 2], [0, 1, 1, 2, 1]]
    assert rows.segment_ids.tolist() == [[0, 0, 1, 1, 2], [0, 1, 2, 2, 3]]
    assert rows.num_sequences == 5
    assert rows.token_sequence.tolist() == [0, 0, 1, 2, 3, 3, 4]
    assert rows.token_row.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert rows.token_column.tolist() == [2, 3, 4, 1, 2, 3, 4]
    # First tokens are predicted by the prompt's last position, the others by their neighbour.
    assert rows.token_predictor.tolist() == [1, 2, 1, 0, 0, 2, 0]


def test_a_response_attends_to_its_prompt_and_itself_only():
    rows = share_prompts(IDS, RESPONSE, GROUP)
    mask = rows.attention_mask(torch.float32)
    assert mask.shape == (2, 1, 5, 5)
    assert torch.equal(rows.attention_mask(), mask == 0)  # boolean: True where allowed
    allowed = (mask[1, 0] == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0],  # prompt token 6
        [1, 1, 0, 0, 0],  # response 1: [7]
        [1, 0, 1, 0, 0],  # response 2: [8, 9]
        [1, 0, 1, 1, 0],
        [1, 0, 0, 0, 1],  # response 3: [10]
    ]
    assert mask[1, 0, 0, 1] == torch.finfo(torch.float32).min


def test_padding_rows_attend_to_something():
    ids = torch.tensor([[1, 3, 0], [1, 4, 0], [5, 6, 7], [5, 8, 0]])
    response = torch.tensor([[0, 1, 0], [0, 1, 0], [0, 1, 1], [0, 1, 0]])
    rows = share_prompts(ids, response, torch.tensor([0, 0, 1, 1]))
    assert rows.segment_ids.tolist() == [[0, 1, 2, -1], [0, 1, 1, 2]]
    allowed = rows.attention_mask(torch.float32)[:, 0] == 0
    assert bool(allowed.any(-1).all())  # no all-masked query row (NaN in softmax)
    assert not bool(allowed[0, :3, 3].any())  # real tokens never see the padding


def test_preference_batch_rows_group_every_k_sequences():
    batch = PreferenceBatch(IDS[:2], (IDS[:2] > 0).long(), RESPONSE[:2], None, num_responses=2)
    rows = batch.shared_prompt_rows()
    assert rows.input_ids.tolist() == [[1, 2, 3, 4, 5]]


def test_share_prompts_rejects_what_it_cannot_pack():
    for broken in (
        RESPONSE * torch.tensor([[1], [0], [1], [1], [1]]),  # an empty response
        RESPONSE + torch.tensor([[1, 1, 0, 0]] + [[0] * 4] * 4),  # no prompt left
        torch.cat([RESPONSE[:3], torch.tensor([[0, 1, 0, 1]]), RESPONSE[4:]]),  # a gap
    ):
        with pytest.raises(ValueError, match="one unbroken response"):
            share_prompts(IDS, broken, GROUP)
    with pytest.raises(ValueError, match="consecutive and share its tokens"):
        share_prompts(IDS, RESPONSE, torch.tensor([0, 0, 0, 1, 1]))  # [6, ...] under prompt 0
    other = IDS.clone()
    other[1, 1] = 9  # same prompt length, another prompt: [1, 9]
    with pytest.raises(ValueError, match="consecutive and share its tokens"):
        share_prompts(other, RESPONSE, GROUP)

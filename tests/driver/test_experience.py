"""PPO experience in the driver: alignment, sharding, advantages and metric sums, by hand."""

import math
from pathlib import Path

import pytest
import torch

from rlhf.algorithms import gae
from rlhf.data.batch import RolloutBatch
from rlhf.driver import experience as xp
from rlhf.driver.rollout import ScoredGroup
from rlhf.models.vllm_engine import Completion


def _completion(prompt_ids, token_ids):
    return Completion("p", prompt_ids, "t", token_ids, True, 0.0)


def _groups():
    # Prompt [5, 6] with responses [7, 8, 9] and [10]; prompt [11] with response [12, 13].
    return [
        ScoredGroup("p", [_completion([5, 6], [7, 8, 9]), _completion([5, 6], [10])], [1.0, 0.0]),
        ScoredGroup("q", [_completion([11], [12, 13])], [0.5]),
    ]


def test_rollout_batch_aligns_reference_logps_to_response_positions():
    # The server's contract: L - 1 log-probs, for tokens 1..L-1 of each sequence.
    ref = [[-0.1, -0.2, -0.3, -0.4], [-0.5, -0.6], [-0.7, -0.8]]
    batch, ref_logps, scores = xp.rollout_batch(_groups(), ref, pad_token_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9], [5, 6, 10, 0, 0], [11, 12, 13, 0, 0]]
    assert batch.attention_mask.tolist() == [[1] * 5, [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]
    assert batch.loss_mask.tolist() == [[0, 0, 1, 1, 1], [0, 0, 1, 0, 0], [0, 1, 1, 0, 0]]
    expected = [[0, 0, -0.2, -0.3, -0.4], [0, 0, -0.6, 0, 0], [0, -0.7, -0.8, 0, 0]]
    assert torch.allclose(ref_logps, torch.tensor(expected))
    assert scores.tolist() == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="2 reference rows for 3 samples"):
        xp.aligned_reference(batch, ref[:2])
    # The per-token view sums to what the server's response_logps would give.
    assert xp.sequence_sums(_groups(), ref) == [[pytest.approx(-0.9), -0.6], [-1.5]]


def test_select_trims_shared_padding_and_shards_cover_every_row_once():
    batch, _, _ = xp.rollout_batch(_groups(), [[0.0] * 4, [0.0] * 2, [0.0] * 2], 0)
    batch.old_logps = torch.arange(15, dtype=torch.float32).view(3, 5)
    tail = batch.select(torch.tensor([1, 2]))
    assert tail.input_ids.shape == (2, 3)  # both rows end by position 3
    assert tail.old_logps.tolist() == [[5, 6, 7], [10, 11, 12]]
    shards = [batch.shard(rank, 2) for rank in range(2)]
    assert [len(s) for s in shards] == [2, 1]
    rebuilt = xp.gather_rows([s.old_logps for s in shards], 5)
    assert torch.equal(rebuilt * batch.attention_mask, batch.old_logps * batch.attention_mask)
    assert len(batch.shard(3, 4)) == 0  # more ranks than rows: an empty shard, not an error


def test_micro_batches_agree_across_ranks():
    assert xp.micro_batches(rows=10, world_size=2, micro_batch_size=2) == 3  # 5 rows per rank
    assert xp.micro_batches(rows=1, world_size=4, micro_batch_size=8) == 1
    assert xp.micro_batches(rows=0, world_size=2, micro_batch_size=8) == 1


def test_by_length_deals_each_rank_rows_of_every_length_shortest_first():
    lengths = torch.tensor([4, 9, 2, 7, 3, 8, 1])  # real tokens of rows 0..6
    rows = torch.tensor([5, 0, 3, 6, 2])  # a shuffled mini-batch: lengths 8, 4, 7, 1, 2
    # Shortest first: rows 6, 2, 0, 3, 5; dealt in turn to 2 ranks: [6, 0, 5] and [2, 3].
    two = xp.by_length(rows, lengths, world_size=2)
    assert two.tolist() == [6, 0, 5, 2, 3]
    assert [s.tolist() for s in two.tensor_split(2)] == [[6, 0, 5], [2, 3]]  # the shards
    assert xp.by_length(rows, lengths, world_size=1).tolist() == [6, 2, 0, 3, 5]
    assert xp.by_length(rows[:1], lengths, world_size=3).tolist() == [5]  # two empty shards


def test_advantages_are_gae_of_kl_penalised_rewards():
    batch, ref, scores = xp.rollout_batch(_groups(), [[-1.0] * 4, [-1.0] * 2, [-1.0] * 2], 0)
    batch.old_logps = torch.where(batch.loss_mask.bool(), -0.5, 0.0)  # k1 = 0.5 per token
    batch.old_values = torch.where(batch.loss_mask.bool(), 0.25, 0.0)
    batch, rewards = xp.advantages_and_returns(
        batch, ref, scores, 0.1, "k1", "gae", {"gamma": 1.0, "lam": 1.0}, 1, whiten=False
    )
    # Row 0: three tokens each -0.05, the score 1.0 on the last.
    assert rewards[0].tolist() == pytest.approx([0, 0, -0.05, -0.05, 0.95])
    expected_adv, expected_ret = gae(rewards, batch.old_values, batch.loss_mask, 1.0, 1.0)
    assert torch.allclose(batch.advantages, expected_adv)
    # lam = 1, gamma = 1: the advantage is the reward-to-go minus the value.
    assert batch.advantages[0, 2].item() == pytest.approx(0.85 - 0.25)
    assert torch.allclose(batch.returns, expected_ret)


def test_grpo_rejects_groups_that_do_not_divide_the_batch():
    batch, ref, scores = xp.rollout_batch(_groups(), [[-1.0] * 4, [-1.0] * 2, [-1.0] * 2], 0)
    batch.old_logps = ref.clone()
    with pytest.raises(ValueError, match="group_size"):
        xp.advantages_and_returns(batch, ref, scores, 0.1, "k1", "grpo", {}, 2, whiten=False)


def test_combine_gives_token_means_over_ranks():
    ranks = [
        {"sums": {"policy_loss": 3.0}, "tokens": 3.0, "grad_norm": 0.5, "lr": 1e-3, "seconds": 1.0},
        {"sums": {"policy_loss": 1.0}, "tokens": 1.0, "grad_norm": 0.5, "lr": 1e-3, "seconds": 2.0},
    ]
    out = xp.combine(ranks, "policy")
    assert out == {
        "policy/policy_loss": 1.0,
        "policy/grad_norm": 0.5,
        "policy/lr": 1e-3,
        "policy/tokens": 4.0,
        "policy/tokens_per_s": 2.0,  # over the slowest rank's seconds
    }


def test_experience_metrics_explained_variance():
    batch, ref, scores = xp.rollout_batch(_groups(), [[-1.0] * 4, [-1.0] * 2, [-1.0] * 2], 0)
    batch.old_logps = ref.clone()
    batch.old_values = torch.zeros_like(ref)
    batch.advantages = torch.zeros_like(ref)
    batch.returns = torch.where(batch.loss_mask.bool(), 1.0, 0.0) * torch.tensor([[1.0], [2], [3]])
    metrics = xp.experience_metrics(batch, ref, scores, torch.zeros_like(ref))
    assert metrics["critic/explained_variance"] == pytest.approx(0.0)  # V = 0 explains nothing
    batch.old_values = batch.returns.clone()
    metrics = xp.experience_metrics(batch, ref, scores, torch.zeros_like(ref))
    assert metrics["critic/explained_variance"] == pytest.approx(1.0)
    assert metrics["train/kl"] == 0.0
    assert math.isclose(metrics["train/reward/mean"], 0.5)


def test_rollout_batch_rejects_mismatched_shapes():
    ids = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="old_logps"):
        RolloutBatch(ids, ids, ids, old_logps=torch.zeros(2, 4))


@pytest.mark.parametrize("advantage", ["gae", "grpo", "rloo", "reinforce_pp"])
def test_the_ppo_preset_runs_with_every_builtin_estimator(advantage):
    from rlhf.config import load_config
    from rlhf.driver.ppo import PPOConfig

    preset = Path(__file__).resolve().parents[2] / "configs" / "ppo.yaml"
    cfg = load_config(PPOConfig, str(preset), [f"ppo.advantage={advantage}"])
    assert cfg.ppo.advantage == advantage


class _Ranks:
    """A trainer group that runs each rank's call in process: the shard's old log-probs."""

    def __init__(self, n: int) -> None:
        self.n, self.shards = n, []

    def __len__(self) -> int:
        return self.n

    def call_sharded(self, method, batch, num_micro):
        self.shards = [batch.shard(rank, self.n) for rank in range(self.n)]
        return [getattr(s, method) for s in self.shards]


def test_sharded_forward_sends_rows_by_length_and_gather_puts_them_back():
    batch, _, _ = xp.rollout_batch(_groups(), [[0.0] * 4, [0.0] * 2, [0.0] * 2], 0)
    batch.old_logps = torch.arange(15, dtype=torch.float32).view(3, 5)  # row i: 5i .. 5i+4
    group = _Ranks(2)
    parts, order = xp.sharded_forward(group, "old_logps", batch, micro_batch_size=8)
    # Lengths 5, 3, 3: shortest first (rows 1, 2, 0), dealt to 2 ranks: [1, 0] and [2].
    assert order.tolist() == [1, 0, 2]
    assert [s.input_ids.shape for s in group.shards] == [(2, 5), (1, 3)]  # rank 1: no padding
    rebuilt = xp.gather_rows(parts, 5, order)
    mask = batch.attention_mask
    assert torch.equal(rebuilt * mask, batch.old_logps * mask)

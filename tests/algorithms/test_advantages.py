"""GAE against an explicit reverse loop; GRPO, RLOO and REINFORCE++ by hand."""

import pytest
import torch

from rlhf.algorithms import (
    AdvantageInput,
    discounted_returns,
    gae,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)


def reference_gae(rewards, values, mask, gamma, lam):
    """Plain python: walk each row backwards over its valid positions only."""
    advantages = torch.zeros_like(rewards)
    returns = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        valid = [t for t in range(rewards.shape[1]) if mask[b, t]]
        next_value, next_advantage = 0.0, 0.0
        for t in reversed(valid):
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            next_advantage = delta + gamma * lam * next_advantage
            next_value = values[b, t].item()
            advantages[b, t] = next_advantage
            returns[b, t] = next_advantage + next_value
    return advantages, returns


def ragged_batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    values = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    mask = torch.tensor(
        [
            [0, 0, 1, 1, 1, 1, 1],  # prompt then a full response
            [0, 1, 1, 1, 0, 0, 0],  # right padding
            [1, 1, 0, 1, 1, 0, 0],  # a masked hole inside the response, then padding
            [0, 0, 0, 0, 0, 0, 1],  # one response token
        ]
    )
    rewards = rewards * mask  # rewards are 0 where the mask is 0
    return rewards, values, mask


@pytest.mark.parametrize(
    ("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0), (0.0, 0.5)]
)
def test_gae_matches_reverse_loop(gamma, lam):
    rewards, values, mask = ragged_batch()
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    expected_adv, expected_ret = reference_gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(advantages, expected_adv)
    torch.testing.assert_close(returns, expected_ret)
    assert (advantages[mask == 0] == 0).all() and (returns[mask == 0] == 0).all()


def test_gae_ignores_garbage_at_masked_positions():
    rewards, values, mask = ragged_batch()
    noisy_rewards = torch.where(mask.bool(), rewards, 1e6)
    noisy_values = torch.where(mask.bool(), values, -1e6)
    clean = gae(rewards, values, mask, 0.9, 0.8)
    noisy = gae(noisy_rewards, noisy_values, mask, 0.9, 0.8)
    torch.testing.assert_close(noisy, clean)


def test_gae_by_hand():
    # One row, 3 valid tokens, gamma = 1, lam = 0.5; V after the last token is 0.
    # delta_2 = 1 + 0 - 0.5 = 0.5;  delta_1 = 0 + 0.5 - 0.25 = 0.25;  delta_0 = 0 + 0.25 - 0 = 0.25
    # A_2 = 0.5;  A_1 = 0.25 + 0.5 * 0.5 = 0.5;  A_0 = 0.25 + 0.5 * 0.5 = 0.5
    # returns = A + V = (0.5, 0.75, 1.0)
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.0, 0.25, 0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(advantages, torch.tensor([[0.5, 0.5, 0.5, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.5, 0.75, 1.0, 0.0]]))


def test_gae_lam_one_gamma_one_gives_reward_to_go():
    rewards, values, mask = ragged_batch()
    _, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # reward-to-go over the valid positions of each row: reversed cumsum of masked rewards
    to_go = rewards.flip(1).cumsum(1).flip(1) * mask
    torch.testing.assert_close(returns, to_go)
    torch.testing.assert_close(discounted_returns(rewards, mask), to_go)


def test_gae_lam_zero_gives_one_step_td():
    # Full-length rows: delta_t = r_t + gamma V_{t+1} - V_t, with V_T = 0.
    gen = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(2, 5, generator=gen), torch.randn(2, 5, generator=gen)
    next_values = torch.cat([values[:, 1:], torch.zeros(2, 1)], 1)
    advantages, _ = gae(rewards, values, torch.ones(2, 5), gamma=0.9, lam=0.0)
    torch.testing.assert_close(advantages, rewards + 0.9 * next_values - values)


def test_gae_outputs_are_detached():
    values = torch.zeros(1, 3, requires_grad=True)
    advantages, returns = gae(torch.ones(1, 3), values, torch.ones(1, 3))
    assert not advantages.requires_grad and not returns.requires_grad


@pytest.mark.parametrize(("gamma", "lam"), [(1.1, 0.9), (0.9, -0.1)])
def test_gae_bad_discounts(gamma, lam):
    with pytest.raises(ValueError, match="gamma" if gamma > 1 else "lam"):
        gae(torch.ones(1, 2), torch.ones(1, 2), torch.ones(1, 2), gamma, lam)


def test_discounted_returns_by_hand():
    # valid rewards (1, [masked], 2, 3), gamma 0.5: G = (1 + 0.5*(2 + 0.5*3), 0, 2 + 0.5*3, 3)
    rewards = torch.tensor([[1.0, 5.0, 2.0, 3.0]])
    mask = torch.tensor([[1, 0, 1, 1]])
    expected = torch.tensor([[1.0 + 0.5 * 3.5, 0.0, 3.5, 3.0]])
    torch.testing.assert_close(discounted_returns(rewards, mask, gamma=0.5), expected)


def terminal_rewards(scores, mask):
    """The score on the last valid token of each row."""
    last = (mask * torch.arange(mask.shape[1])).argmax(1)
    rewards = torch.zeros(mask.shape)
    rewards[torch.arange(len(scores)), last] = scores
    return rewards


MASK = torch.tensor(
    [[0, 1, 1, 0], [0, 1, 1, 1], [0, 1, 0, 0], [0, 1, 1, 1], [1, 1, 0, 0], [0, 1, 1, 1]]
)


def test_grpo_by_hand():
    # two prompts, K = 3: scores (1, 2, 3) and (5, 5, 8)
    # group 1: mean 2, std (unbiased) sqrt((1 + 0 + 1) / 2) = 1      -> (-1, 0, 1)
    # group 2: mean 6, std sqrt((1 + 1 + 4) / 2) = sqrt(3)            -> (-1, -1, 2) / sqrt(3)
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 8.0])
    rewards = terminal_rewards(scores, MASK)
    advantages, returns = grpo_advantages(rewards, MASK, group_size=3, eps=0.0)
    expected = torch.tensor([-1.0, 0.0, 1.0, -1 / 3**0.5, -1 / 3**0.5, 2 / 3**0.5])
    torch.testing.assert_close(advantages, expected[:, None] * MASK)
    torch.testing.assert_close(returns, scores[:, None] * MASK)  # reward-to-go of a terminal reward
    # Dr. GRPO: mean subtraction only
    advantages, _ = grpo_advantages(rewards, MASK, group_size=3, scale_by_std=False)
    torch.testing.assert_close(advantages, torch.tensor([-1.0, 0, 1, -1, -1, 2])[:, None] * MASK)


def test_rloo_by_hand():
    # A_i = s_i - mean of the others: group (1, 2, 3) -> (1 - 2.5, 2 - 2, 3 - 1.5) = (-1.5, 0, 1.5)
    # group (5, 5, 8) -> (5 - 6.5, 5 - 6.5, 8 - 5) = (-1.5, -1.5, 3)
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 8.0])
    advantages, _ = rloo_advantages(terminal_rewards(scores, MASK), MASK, group_size=3)
    expected = torch.tensor([-1.5, 0.0, 1.5, -1.5, -1.5, 3.0])
    torch.testing.assert_close(advantages, expected[:, None] * MASK)


def test_group_scores_sum_token_rewards():
    # per-token rewards (e.g. with a KL penalty) count through their sum over valid tokens
    rewards = torch.tensor([[0.5, 0.5, 9.0], [0.0, 3.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    advantages, _ = rloo_advantages(rewards, mask, group_size=2)  # scores 1 and 3
    torch.testing.assert_close(advantages, torch.tensor([[-2.0, -2.0, 0.0], [2.0, 2.0, 0.0]]))


@pytest.mark.parametrize("fn", [grpo_advantages, rloo_advantages])
def test_group_size_must_divide_the_batch(fn):
    with pytest.raises(ValueError, match="group_size"):
        fn(torch.zeros(6, 2), torch.ones(6, 2), group_size=4)
    with pytest.raises(ValueError, match="group_size"):
        fn(torch.zeros(6, 2), torch.ones(6, 2), group_size=1)


def test_reinforce_pp_whitens_returns_over_the_batch():
    # returns with gamma = 1 over valid tokens: row 0 (3, 2), row 1 (4, 4, 4) -> mean 17/5
    rewards = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 4.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    advantages, returns = reinforce_pp_advantages(rewards, mask)
    torch.testing.assert_close(returns, torch.tensor([[3.0, 2.0, 0.0], [4.0, 4.0, 4.0]]))
    valid = torch.tensor([3.0, 2.0, 4.0, 4.0, 4.0])
    whitened = (valid - valid.mean()) / valid.std()
    torch.testing.assert_close(advantages[mask.bool()], whitened, atol=1e-6, rtol=1e-6)
    assert advantages[0, 2] == 0


def test_advantage_input_validates():
    with pytest.raises(ValueError, match="mask"):
        AdvantageInput(rewards=torch.zeros(2, 3), mask=torch.ones(2, 4), values=None)
    with pytest.raises(ValueError, match="values"):
        AdvantageInput(rewards=torch.zeros(2, 3), mask=torch.ones(2, 3), values=torch.ones(2))
    with pytest.raises(ValueError, match="group_size"):
        AdvantageInput(torch.zeros(4, 3), torch.ones(4, 3), None, group_size=3)

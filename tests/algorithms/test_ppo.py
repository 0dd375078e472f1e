"""The clipped PPO losses against hand-computed values."""

import math

import pytest
import torch

from rlhf.algorithms import ppo_policy_loss, ppo_value_loss


def test_policy_loss_by_hand():
    # ratios (1.5, 0.5, 0.5, 1.5) with advantages (+1, +1, -1, -1), eps 0.2, and a masked token:
    # token 0: -min(1.5, 1.2)    = -1.2   (clipped)
    # token 1: -min(0.5, 0.8)    = -0.5
    # token 2: -min(-0.5, -0.8)  =  0.8   (clipped)
    # token 3: -min(-1.5, -1.2)  =  1.5
    # mean (-1.2 - 0.5 + 0.8 + 1.5) / 4 = 0.15; clipped on 2 of 4 tokens
    ratios = torch.tensor([[1.5, 0.5, 0.5, 1.5, 100.0]])
    old_logp = torch.full((1, 5), -2.0)
    logp = (old_logp + ratios.log()).requires_grad_(True)
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, 50.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, stats = ppo_policy_loss(logp, old_logp, advantages, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.15)
    assert stats["clip_fraction"].item() == pytest.approx(0.5)
    # approx_kl: k3 estimate of KL(old || new), ratio new/old: mean of (r - 1) - log r
    expected_kl = sum((r - 1) - math.log(r) for r in (1.5, 0.5, 0.5, 1.5)) / 4
    assert stats["approx_kl"].item() == pytest.approx(expected_kl, rel=1e-5)
    loss.backward()
    # d/dlogp of -ratio * A / 4 where unclipped (tokens 1, 3), 0 where clipped or masked
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.5 / 4, 0.0, 1.5 / 4, 0.0]]))


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
    logp = torch.randn(3, 4)
    advantages = torch.randn(3, 4)
    loss, stats = ppo_policy_loss(logp, logp, advantages, torch.ones(3, 4))
    torch.testing.assert_close(loss, -advantages.mean())
    assert stats["clip_fraction"].item() == 0.0 and stats["approx_kl"].item() == 0.0


def test_value_loss_by_hand():
    # token 0: old 0, V 0.5, R 1: clipped V 0.2 -> max(0.25, 0.64) = 0.64 (clipped is larger)
    # token 1: old 1, V 1.5, R 1: clipped V 1.2 -> max(0.25, 0.04) = 0.25
    # loss = 0.5 * (0.64 + 0.25) / 2 = 0.2225
    values = torch.tensor([[0.5, 1.5, 7.0]], requires_grad=True)
    old_values = torch.tensor([[0.0, 1.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = ppo_value_loss(values, old_values, returns, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.2225)
    assert stats["clip_fraction"].item() == pytest.approx(0.5)
    # unclipped: 0.5 * (0.25 + 0.25) / 2 = 0.125
    loss, _ = ppo_value_loss(values, old_values, returns, mask, clip_eps=None)
    assert loss.item() == pytest.approx(0.125)


@pytest.mark.parametrize("fn", [ppo_policy_loss, ppo_value_loss])
def test_shape_mismatch_and_bad_clip(fn):
    with pytest.raises(ValueError, match="shape mismatch"):
        fn(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="clip_eps"):
        fn(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), clip_eps=0.0)

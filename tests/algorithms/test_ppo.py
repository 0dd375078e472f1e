"""The clipped PPO losses against hand-computed values."""

import math

import pytest
import torch

from rlhf.algorithms import ppo_policy_loss, ppo_value_loss, truncated_is_weights


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


def test_truncated_is_weights_by_hand():
    # pi_old / mu per token: e^0.5 = 1.6487, e^-1 = 0.3679, e^2 = 7.389 (capped at 2), and a
    # masked token with a huge ratio that must count nowhere.
    old_logp = torch.tensor([[-1.0, -2.0, -0.5, -1.0]])
    behaviour = torch.tensor([[-1.5, -1.0, -2.5, -30.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    weights, stats = truncated_is_weights(old_logp, behaviour, mask, cap=2.0)
    torch.testing.assert_close(
        weights, torch.tensor([[math.exp(0.5), math.exp(-1.0), 2.0, 0.0]]), rtol=1e-6, atol=0
    )
    ratios = (math.exp(0.5), math.exp(-1.0), math.exp(2.0))
    assert stats["ratio_mean"].item() == pytest.approx(sum(ratios) / 3, rel=1e-6)
    assert stats["ratio_max"].item() == pytest.approx(math.exp(2.0), rel=1e-6)
    assert stats["capped_fraction"].item() == pytest.approx(1 / 3)


def test_truncated_is_weights_on_policy_are_one():
    logp = torch.randn(2, 3)
    weights, stats = truncated_is_weights(logp, logp, torch.ones(2, 3), cap=2.0)
    torch.testing.assert_close(weights, torch.ones(2, 3))
    assert stats["capped_fraction"].item() == 0.0 and stats["ratio_max"].item() == 1.0


def test_truncated_is_weights_reject_a_bad_cap_and_shapes():
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), cap=0.0)
    with pytest.raises(ValueError, match="behaviour_logp"):
        truncated_is_weights(torch.zeros(1, 2), torch.zeros(1, 3), torch.ones(1, 2), cap=2.0)


def test_policy_loss_weighs_each_token_by_its_is_weight():
    # The tokens of test_policy_loss_by_hand, weighted (0.5, 2, 1, 0): per-token losses
    # (-1.2, -0.5, 0.8, 1.5) -> (-0.6 - 1.0 + 0.8 + 0) / 4 = -0.2; the clipped token 0 still
    # has no gradient, token 1's is 2 * (-0.5 / 4), token 3's is 0.
    ratios = torch.tensor([[1.5, 0.5, 0.5, 1.5]])
    old_logp = torch.full((1, 4), -2.0)
    logp = (old_logp + ratios.log()).requires_grad_(True)
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    weights = torch.tensor([[0.5, 2.0, 1.0, 0.0]])
    loss, stats = ppo_policy_loss(
        logp, old_logp, advantages, torch.ones(1, 4), clip_eps=0.2, is_weights=weights
    )
    assert loss.item() == pytest.approx(-0.2)
    assert stats["clip_fraction"].item() == pytest.approx(0.5)  # the weights change no stat
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -1.0 / 4, 0.0, 0.0]]))

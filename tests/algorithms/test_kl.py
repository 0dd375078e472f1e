"""KL estimators, KL-penalised rewards and the KL controllers."""

import math

import pytest
import torch

from rlhf.algorithms import (
    AdaptiveKLController,
    FixedKLController,
    kl_estimate,
    kl_penalized_rewards,
    sequence_kl,
)


def test_estimators_by_hand():
    # log_ratio = log pi - log pi_ref = (1, -1, 0)
    logp, ref_logp = torch.tensor([-1.0, -3.0, -2.0]), torch.tensor([-2.0, -2.0, -2.0])
    torch.testing.assert_close(kl_estimate(logp, ref_logp, "k1"), torch.tensor([1.0, -1.0, 0.0]))
    torch.testing.assert_close(kl_estimate(logp, ref_logp, "k2"), torch.tensor([0.5, 0.5, 0.0]))
    # k3 = (ratio - 1) - log ratio with ratio = pi_ref / pi = e^-log_ratio:
    # (e^-1 - 1) + 1 = 0.3678794;  (e - 1) - 1 = 0.7182818;  0
    expected = torch.tensor([math.exp(-1), math.e - 2, 0.0])
    torch.testing.assert_close(kl_estimate(logp, ref_logp, "k3"), expected)


def test_k3_is_nonnegative_and_unbiased():
    torch.manual_seed(0)
    logp_table = torch.log_softmax(torch.randn(10), 0)
    ref_table = torch.log_softmax(torch.randn(10), 0)
    assert (kl_estimate(logp_table, ref_table, "k3") >= 0).all()
    exact = (logp_table.exp() * (logp_table - ref_table)).sum()
    # E_{y ~ pi}[k] weighted exactly: k1 and k3 are unbiased for KL(pi || pi_ref)
    for kind in ("k1", "k3"):
        expectation = (logp_table.exp() * kl_estimate(logp_table, ref_table, kind)).sum()
        torch.testing.assert_close(expectation, exact)


def test_sequence_kl_by_hand():
    # One response, two positions, vocabulary of 2. The reference is uniform at both; the policy
    # is uniform at t=0 (KL 0) and (3/4, 1/4) at t=1 (logits ln 3, 0):
    #   KL = 3/4 ln(3/4 / 1/2) + 1/4 ln(1/4 / 1/2) = 0.75 ln 1.5 - 0.25 ln 2 = 0.1308120...
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])
    ref_logits = torch.zeros(1, 2, 2)
    expected = 0.75 * math.log(1.5) - 0.25 * math.log(2.0)
    assert sequence_kl(logits, ref_logits, torch.tensor([[1, 1]])).item() == pytest.approx(expected)
    assert sequence_kl(logits, ref_logits, torch.tensor([[1, 0]])).item() == 0.0  # masked out
    # Logits shifted by a constant are the same distribution: KL 0 (clamped at rounding)
    assert sequence_kl(logits + 5.0, logits, torch.ones(1, 2)).item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="mask"):
        sequence_kl(logits, ref_logits, torch.ones(1, 3))


def test_sequence_kl_is_the_mean_of_summed_k1_over_every_response():
    # Two steps over a vocabulary of 3 with a prefix-dependent second step: the exact sequence
    # KL is the probability-weighted sum of summed k1 over all 9 responses; the mean of
    # sequence_kl weighted the same way must equal it (chain rule), each term being >= 0.
    torch.manual_seed(0)
    first, ref_first = torch.randn(3), torch.randn(3)
    second, ref_second = torch.randn(3, 3), torch.randn(3, 3)  # row: the first token
    lp1, rp1 = first.log_softmax(0), ref_first.log_softmax(0)
    lp2, rp2 = second.log_softmax(1), ref_second.log_softmax(1)
    exact = rb = 0.0
    for a in range(3):
        for b in range(3):
            p = (lp1[a] + lp2[a, b]).exp()
            exact += p * ((lp1[a] - rp1[a]) + (lp2[a, b] - rp2[a, b]))
            logits = torch.stack([first, second[a]])[None]
            ref_logits = torch.stack([ref_first, ref_second[a]])[None]
            estimate = sequence_kl(logits, ref_logits, torch.ones(1, 2))
            assert estimate.item() >= 0
            rb += p * estimate[0]
    torch.testing.assert_close(rb, exact)


def test_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")


def test_kl_penalized_rewards_by_hand():
    # row 0: response tokens at 1, 2; row 1: at 0, 1, 2 then padding
    logp = torch.tensor([[0.0, -1.0, -1.0, 0.0], [-1.0, -2.0, -1.0, 5.0]])
    ref_logp = torch.tensor([[0.0, -2.0, -1.5, 0.0], [-1.0, -1.0, -1.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 0]])
    scores = torch.tensor([2.0, -1.0])
    rewards = kl_penalized_rewards(scores, logp, ref_logp, mask, kl_coef=0.1)
    # k1 = (., 1, 0.5, .) and (0, -1, 0, .): r = -0.1 * k1, plus the score on the last token
    expected = torch.tensor([[0.0, -0.1, -0.05 + 2.0, 0.0], [0.0, 0.1, 0.0 - 1.0, 0.0]])
    torch.testing.assert_close(rewards, expected)


def test_kl_penalized_rewards_are_detached_and_need_a_token():
    logp = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[0, 1, 1], [0, 0, 0]])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        kl_penalized_rewards(torch.ones(2), logp, torch.zeros(2, 3), mask, 0.1)
    rewards = kl_penalized_rewards(torch.ones(2), logp, torch.zeros(2, 3), torch.ones(2, 3), 0.1)
    assert not rewards.requires_grad


def test_adaptive_controller_moves_toward_target():
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    # KL 12 is above target: error 12/6 - 1 = 1 clipped to 0.2; 0.1 * (1 + 0.2 * 256 / 10000)
    controller.update(current_kl=12.0, n_steps=256)
    assert controller.value == pytest.approx(0.1 * 1.00512)
    # KL 3 is below target: error -0.5 clipped to -0.2
    before = controller.value
    controller.update(current_kl=3.0, n_steps=256)
    assert controller.value == pytest.approx(before * (1 - 0.00512))
    # KL 6.6: error 0.1, not clipped
    before = controller.value
    controller.update(current_kl=6.6, n_steps=1000)
    assert controller.value == pytest.approx(before * (1 + 0.1 * 1000 / 10_000))


def test_adaptive_controller_closes_the_loop():
    # A toy environment whose KL falls as the coefficient grows: KL = 1 / coef.
    controller = AdaptiveKLController(init_kl_coef=0.05, target=4.0, horizon=1_000)
    for _ in range(500):
        controller.update(current_kl=1.0 / controller.value, n_steps=100)
    assert 1.0 / controller.value == pytest.approx(4.0, rel=0.05)


def test_fixed_controller():
    controller = FixedKLController(0.05)
    controller.update(current_kl=100.0, n_steps=1000)
    assert controller.value == 0.05


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"init_kl_coef": 0.0, "target": 1.0, "horizon": 1.0}, "init_kl_coef"),
        ({"init_kl_coef": 0.1, "target": 0.0, "horizon": 1.0}, "target"),
        ({"init_kl_coef": 0.1, "target": 1.0, "horizon": 0.0}, "horizon"),
    ],
)
def test_adaptive_controller_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveKLController(**kwargs)

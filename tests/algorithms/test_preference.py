"""DPO, cDPO, IPO, hinge and Plackett-Luce losses against values worked out by hand."""

import math

import pytest
import torch

from rlhf.algorithms import RankedLogps, dpo_loss, plackett_luce_loss, preference_metrics


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# One pair used throughout: log-ratios chosen = -10 - (-12) = 2, rejected = -14 - (-11) = -3,
# so the log-ratio margin is 5 and with beta = 0.1, h = 0.1 * 5 = 0.5.
PAIR = (t(-10.0), t(-14.0), t(-12.0), t(-11.0))


def test_sigmoid_by_hand():
    losses, chosen, rejected = dpo_loss(*PAIR, beta=0.1)
    # -log sigmoid(0.5) = log(1 + e^-0.5) = log(1.6065307) = 0.4740770
    assert losses.item() == pytest.approx(0.474076984, abs=1e-8)
    assert losses.item() == pytest.approx(math.log1p(math.exp(-0.5)))
    # implicit rewards beta * log-ratio: 0.1 * 2 and 0.1 * -3
    assert chosen.item() == pytest.approx(0.2)
    assert rejected.item() == pytest.approx(-0.3)


def test_sigmoid_is_ln2_when_policy_equals_reference():
    logps = torch.randn(8, dtype=torch.float64) * 30
    other = torch.randn(8, dtype=torch.float64) * 30
    losses, chosen, rejected = dpo_loss(logps, other, logps, other, beta=0.1)
    assert torch.equal(losses, torch.full_like(losses, math.log(2)))
    assert torch.equal(chosen, torch.zeros_like(chosen))
    assert torch.equal(rejected, torch.zeros_like(rejected))


def test_rewards_are_detached():
    policy_chosen = t(-10.0).requires_grad_(True)
    losses, chosen, rejected = dpo_loss(policy_chosen, *PAIR[1:], beta=0.1)
    assert losses.requires_grad
    assert not chosen.requires_grad and not rejected.requires_grad


def test_conservative_dpo_by_hand():
    losses, _, _ = dpo_loss(*PAIR, beta=0.1, label_smoothing=0.1)
    # 0.9 * -log sigmoid(0.5) + 0.1 * -log sigmoid(-0.5)
    # = 0.9 * 0.4740770 + 0.1 * 0.9740770 = 0.4266693 + 0.0974077 = 0.5240770
    assert losses.item() == pytest.approx(0.524076984, abs=1e-8)


def test_ipo_by_hand():
    # beta = 0.25: 1 / (2 beta) = 2; log-ratio margin 5; (5 - 2)^2 = 9
    losses, _, _ = dpo_loss(*PAIR, beta=0.25, loss_type="ipo")
    assert losses.item() == pytest.approx(9.0)
    # beta = 0.1: 1 / (2 beta) = 5 = the margin: the loss is 0
    losses, _, _ = dpo_loss(*PAIR, beta=0.1, loss_type="ipo")
    assert losses.item() == pytest.approx(0.0)


def test_hinge_by_hand():
    # beta = 0.1: h = 0.5, max(0, 1 - 0.5) = 0.5; beta = 0.25: h = 1.25, max(0, -0.25) = 0
    losses, _, _ = dpo_loss(*PAIR, beta=0.1, loss_type="hinge")
    assert losses.item() == pytest.approx(0.5)
    losses, _, _ = dpo_loss(*PAIR, beta=0.25, loss_type="hinge")
    assert losses.item() == 0.0


def expected_loss_minimiser(loss_type: str, p: float, beta: float, **kwargs) -> float:
    """The log-ratio margin m minimising p * loss(m) + (1 - p) * loss(-m) (labels flip w.p. 1-p)."""
    margin = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    optimizer = torch.optim.LBFGS(
        [margin],
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        won, _, _ = dpo_loss(margin, zero, zero, zero, beta, loss_type, **kwargs)
        lost, _, _ = dpo_loss(zero, margin, zero, zero, beta, loss_type, **kwargs)
        loss = (p * won + (1 - p) * lost).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return margin.item()


@pytest.mark.parametrize("p", [1.0, 0.8, 0.6])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_ipo_fixed_point(p, beta):
    # The optimum of IPO's expected loss has log-ratio margin (p - 1/2) / beta; 1/(2 beta) at p=1.
    assert expected_loss_minimiser("ipo", p, beta) == pytest.approx((p - 0.5) / beta, rel=1e-6)


@pytest.mark.parametrize("eps", [0.1, 0.25])
def test_conservative_dpo_fixed_point(eps):
    # With certain labels (p = 1) flipped with probability eps, beta * margin = log((1-eps)/eps).
    margin = expected_loss_minimiser("sigmoid", 1.0, 0.5, label_smoothing=eps)
    assert 0.5 * margin == pytest.approx(math.log((1 - eps) / eps), rel=1e-6)


def test_analytic_gradient_matches_autograd():
    # log pi(y) = log_softmax(W theta)[y]; the DPO gradient (Rafailov et al. 2023, sec. 4) is
    # grad loss = -beta * sigmoid(-h) * (grad log pi(y_w) - grad log pi(y_l)).
    torch.manual_seed(0)
    beta = 0.3
    weights = torch.randn(5, 4, dtype=torch.float64)
    theta = torch.randn(4, dtype=torch.float64, requires_grad=True)
    ref = torch.log_softmax(torch.randn(5, dtype=torch.float64), 0)
    w, lo = 1, 3

    def logp(y):
        return torch.log_softmax(weights @ theta, 0)[y]

    loss, _, _ = dpo_loss(logp(w)[None], logp(lo)[None], ref[w][None], ref[lo][None], beta=beta)
    (autograd,) = torch.autograd.grad(loss.sum(), theta)
    (grad_w,) = torch.autograd.grad(logp(w), theta)
    (grad_l,) = torch.autograd.grad(logp(lo), theta)
    with torch.no_grad():
        h = beta * ((logp(w) - ref[w]) - (logp(lo) - ref[lo]))
    analytic = -beta * torch.sigmoid(-h) * (grad_w - grad_l)
    torch.testing.assert_close(autograd, analytic)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss_type": "kto"}, "loss_type"),
        ({"beta": 0.0}, "beta"),
        ({"beta": -1.0}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"label_smoothing": 0.5}, "label_smoothing"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"label_smoothing": 0.1, "loss_type": "ipo"}, "label_smoothing"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dpo_loss(*PAIR, **kwargs)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="ref_rejected_logps"):
        dpo_loss(t(1.0, 2.0), t(1.0, 2.0), t(1.0, 2.0), t(1.0))


def test_plackett_luce_with_two_equals_sigmoid_dpo():
    torch.manual_seed(0)
    policy, ref = torch.randn(16, 2) * 5, torch.randn(16, 2) * 5
    expected, _, _ = dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta=0.2)
    torch.testing.assert_close(plackett_luce_loss(policy, ref, beta=0.2), expected)


def test_plackett_luce_k3_by_hand():
    # beta = 1, reference 0, so s = (1, 0, -1).
    # k=1: s_1 - log(e^1 + e^0 + e^-1) = 1 - log(4.0861613) = 1 - 1.4076060 = -0.4076060
    # k=2: s_2 - log(e^0 + e^-1)       = 0 - log(1.3678794) =     -0.3132617
    # loss = 0.4076060 + 0.3132617 = 0.7208677; truncated to the top 1: 0.4076060
    policy, ref = t(1.0, 0.0, -1.0)[None], torch.zeros(1, 3, dtype=torch.float64)
    assert plackett_luce_loss(policy, ref, beta=1.0).item() == pytest.approx(0.720867651)
    assert plackett_luce_loss(policy, ref, beta=1.0, top_m=1).item() == pytest.approx(0.407605964)
    # M >= K - 1 is the full ranking (the k = K term is 0)
    assert plackett_luce_loss(policy, ref, beta=1.0, top_m=5).item() == pytest.approx(0.720867651)


def test_plackett_luce_uses_beta_and_reference():
    # s = beta * (policy - ref): policy (3, 1) with ref (1, 1) and beta 0.5 gives s = (1, 0),
    # loss = -(1 - log(e + 1)) = log(1 + e^-1) = 0.3132617
    loss = plackett_luce_loss(t(3.0, 1.0)[None], t(1.0, 1.0)[None], beta=0.5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1)))


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((torch.zeros(2, 3), torch.zeros(2, 2)), {}, "ref_logps"),
        ((torch.zeros(2, 1), torch.zeros(2, 1)), {}, "K >= 2"),
        ((torch.zeros(2, 3), torch.zeros(2, 3)), {"top_m": 0}, "top_m"),
        ((torch.zeros(2, 3), torch.zeros(2, 3)), {"beta": 0}, "beta"),
    ],
)
def test_plackett_luce_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plackett_luce_loss(*args, **kwargs)


def test_preference_metrics_pairs():
    # rewards chosen 0.1 * (2, -1) = (0.2, -0.1); rejected 0.1 * (-3, 1) = (-0.3, 0.1)
    logps = RankedLogps(
        policy=t(-10.0, -14.0, -20.0, -21.0).view(2, 2),
        reference=t(-12.0, -11.0, -19.0, -22.0).view(2, 2),
        lengths=torch.ones(2, 2),
    )
    metrics = preference_metrics(logps, beta=0.1)
    assert metrics["rewards/chosen"] == pytest.approx((0.2 - 0.1) / 2)
    assert metrics["rewards/rejected"] == pytest.approx((-0.3 + 0.1) / 2)
    assert metrics["rewards/margins"] == pytest.approx((0.5 - 0.2) / 2)
    assert metrics["rewards/accuracies"] == pytest.approx(0.5)
    assert metrics["logps/chosen"] == pytest.approx(-15.0)
    assert metrics["logps/rejected"] == pytest.approx(-17.5)
    assert all(isinstance(v, float) for v in metrics.values())


def test_preference_metrics_rankings_count_adjacent_pairs():
    # beta = 1, reference 0: rewards (3, 1, 2): pair (3, 1) right, (1, 2) wrong -> accuracy 1/2;
    # margin first - last = 3 - 2 = 1
    logps = RankedLogps(
        policy=t(3.0, 1.0, 2.0)[None], reference=torch.zeros(1, 3), lengths=torch.ones(1, 3)
    )
    metrics = preference_metrics(logps, beta=1.0)
    assert metrics["rewards/accuracies"] == pytest.approx(0.5)
    assert metrics["rewards/margins"] == pytest.approx(1.0)

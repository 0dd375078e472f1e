"""The DPO variants, the reference-free losses and weighted sums, against values worked out by
hand from each paper's formula (plain ``math`` below, never the code under test)."""

import math

import pytest
import torch

from rlhf.algorithms import RankedLogps, get_preference_loss, preference_losses


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def logsig(x: float) -> float:
    """log sigmoid(x) = -log(1 + e^-x)."""
    return -math.log1p(math.exp(-x))


def ranked(policy, reference=None, lengths=None) -> RankedLogps:
    policy = torch.tensor(policy, dtype=torch.float64)
    ref = None if reference is None else torch.tensor(reference, dtype=torch.float64)
    lengths = torch.ones_like(policy) if lengths is None else torch.tensor(lengths)
    return RankedLogps(policy, ref, lengths)


def loss(name: str, logps: RankedLogps, beta: float = 0.1, **options) -> list[float]:
    return get_preference_loss(name)(logps, beta, **options).tolist()


# Two pairs used throughout, beta = 0.1.
# Row 0: policy (-10, -14), reference (-12, -11): log-ratios rho_w = 2, rho_l = -3, rewards
#   r_w = 0.2, r_l = -0.3, h = 0.5; lengths 4 and 7 tokens.
# Row 1: policy (-5, -6), reference (-5, -5): rho_w = 0, rho_l = -1, r_w = 0, r_l = -0.1,
#   h = 0.1; lengths 2 and 3.
PAIRS = ranked([[-10.0, -14.0], [-5.0, -6.0]], [[-12.0, -11.0], [-5.0, -5.0]], [[4, 7], [2, 3]])
R_W, R_L, H = (0.2, 0.0), (-0.3, -0.1), (0.5, 0.1)


def test_robust_by_hand_and_unbiased_under_flips():
    eps = 0.2
    expected = [((1 - eps) * -logsig(h) - eps * -logsig(-h)) / (1 - 2 * eps) for h in H]
    assert loss("robust", PAIRS, label_smoothing=eps) == pytest.approx(expected)
    # Chowdhury et al.: with labels flipped with probability eps, its expectation is the
    # clean DPO loss -log sigmoid(h).
    swapped = ranked(
        [[-14.0, -10.0], [-6.0, -5.0]], [[-11.0, -12.0], [-5.0, -5.0]], [[7, 4], [3, 2]]
    )
    clean = torch.tensor(loss("robust", PAIRS, label_smoothing=eps))
    flipped = torch.tensor(loss("robust", swapped, label_smoothing=eps))
    assert ((1 - eps) * clean + eps * flipped).tolist() == pytest.approx([-logsig(h) for h in H])
    # eps = 0 is DPO
    assert loss("robust", PAIRS) == pytest.approx(loss("sigmoid", PAIRS))


def test_exo_pair_by_hand_and_its_optimum():
    eps = 0.01
    expected = [
        sig(h) * (logsig(h) - math.log(1 - eps)) + sig(-h) * (logsig(-h) - math.log(eps)) for h in H
    ]
    assert loss("exo_pair", PAIRS, label_smoothing=eps) == pytest.approx(expected)
    # The reverse KL is 0 (its minimum) where sigmoid(h) = 1 - eps: h = log((1 - eps) / eps).
    rho = math.log((1 - eps) / eps) / 0.1
    at_optimum = ranked([[rho, 0.0]], [[0.0, 0.0]])
    assert loss("exo_pair", at_optimum, label_smoothing=eps) == pytest.approx([0.0], abs=1e-12)


def test_nca_pair_by_hand():
    expected = [
        -logsig(rw) - 0.5 * logsig(-rw) - 0.5 * logsig(-rl) for rw, rl in zip(R_W, R_L, strict=True)
    ]
    assert loss("nca_pair", PAIRS) == pytest.approx(expected)


def test_bco_pair_by_hand():
    # delta fixed: -log sigmoid(r_w - delta) - log sigmoid(-(r_l - delta))
    expected = [-logsig(rw - 0.05) - logsig(-(rl - 0.05)) for rw, rl in zip(R_W, R_L, strict=True)]
    assert loss("bco_pair", PAIRS, delta=0.05) == pytest.approx(expected)
    # default: delta is the mean of the batch's four rewards, (0.2 + 0 - 0.3 - 0.1) / 4 = -0.05
    expected = [-logsig(rw + 0.05) - logsig(-(rl + 0.05)) for rw, rl in zip(R_W, R_L, strict=True)]
    assert loss("bco_pair", PAIRS) == pytest.approx(expected)


def test_bco_pair_takes_no_gradient_through_the_batch_mean():
    policy = PAIRS.policy.clone().requires_grad_(True)
    losses = get_preference_loss("bco_pair")(
        RankedLogps(policy, PAIRS.reference, PAIRS.lengths), 0.1
    )
    losses.sum().backward()
    # d/d log pi(y_w) of -log sigmoid(r_w - delta) = -beta * sigmoid(-(r_w - delta)), delta fixed
    expected_w = [-0.1 * sig(-(rw + 0.05)) for rw in R_W]
    assert policy.grad[:, 0].tolist() == pytest.approx(expected_w)


def test_sppo_hard_by_hand_and_its_fixed_point():
    # (rho_w - 1/(2 beta))^2 + (rho_l + 1/(2 beta))^2 with 1/(2 beta) = 5
    assert loss("sppo_hard", PAIRS) == pytest.approx([(2 - 5) ** 2 + (-3 + 5) ** 2, 25 + 16])
    assert loss("sppo_hard", ranked([[5.0, -5.0]], [[0.0, 0.0]])) == pytest.approx([0.0])


def test_aot_sorts_the_margins_over_the_batch():
    # Policy margins log pi(y_w) - log pi(y_l): 4 and 1; the reference's: -1 and 0.
    # Sorted: (1, 4) and (-1, 0), so d = (2, 4) (quantile by quantile, not pair by pair).
    assert loss("aot", PAIRS) == pytest.approx([-logsig(0.2), -logsig(0.4)])
    eps = 0.1
    smoothed = [-(1 - eps) * logsig(z) - eps * logsig(-z) for z in (0.2, 0.4)]
    assert loss("aot", PAIRS, label_smoothing=eps) == pytest.approx(smoothed)


def test_aot_unpaired_sorts_chosen_and_rejected_log_ratios_apart():
    # rho_w (2, 0) sorted (0, 2); rho_l (-3, -1) sorted (-3, -1): d = (3, 3).
    assert loss("aot_unpaired", PAIRS) == pytest.approx([-logsig(0.3)] * 2)


def test_apo_by_hand():
    zero = [1 - sig(rw) + sig(rl) for rw, rl in zip(R_W, R_L, strict=True)]
    down = [sig(rw) + 1 - sig(rw - rl) for rw, rl in zip(R_W, R_L, strict=True)]
    assert loss("apo_zero", PAIRS) == pytest.approx(zero)
    assert loss("apo_down", PAIRS) == pytest.approx(down)


def test_discopop_by_hand():
    for tau in (0.05, 1.0):
        expected = [(1 - sig(h / tau)) * -logsig(h) + sig(h / tau) * math.exp(-h) for h in H]
        assert loss("discopop", PAIRS, tau=tau) == pytest.approx(expected)


def test_rpo_is_dpo_plus_the_chosen_nll_per_token():
    # chosen NLL per token: 10 / 4 and 5 / 2
    expected = [-logsig(0.5) + 0.5 * 2.5, -logsig(0.1) + 0.5 * 2.5]
    assert loss("rpo", PAIRS, alpha=0.5) == pytest.approx(expected)


# --- reference-free ---------------------------------------------------------------------------


def test_sft_is_the_best_responses_nll_per_token_for_any_k():
    assert loss("sft", PAIRS) == pytest.approx([2.5, 2.5])
    assert loss("sft", ranked([[-6.0, -1.0, -2.0]], lengths=[[3, 1, 1]])) == pytest.approx([2.0])


def test_simpo_pairs_by_hand_with_gradient():
    # Row 0: mean log-probs -4/2 = -2 (chosen), -9/3 = -3 (rejected); beta 2, gamma 1:
    #   margin 2 * (-2 - -3) - 1 = 1, loss -log sigmoid(1).
    # Row 1: -6/3 = -2 and -2/1 = -2: equal per token, although the chosen one's sum is lower;
    #   margin 2 * 0 - 1 = -1, loss -log sigmoid(-1).
    policy = torch.tensor([[-4.0, -9.0], [-6.0, -2.0]], requires_grad=True)
    logps = RankedLogps(policy, None, torch.tensor([[2, 3], [3, 1]]))
    losses = get_preference_loss("simpo")(logps, 2.0, gamma=1.0)
    assert losses.tolist() == pytest.approx([-logsig(1.0), -logsig(-1.0)])
    # d loss / d logp_w = -sigmoid(-margin) * beta / |y_w|, d loss / d logp_l = +... / |y_l|.
    losses.sum().backward()
    s0, s1 = sig(-1.0), sig(1.0)
    expected = [[-s0 * 2 / 2, s0 * 2 / 3], [-s1 * 2 / 3, s1 * 2 / 1]]
    torch.testing.assert_close(policy.grad, torch.tensor(expected))


def test_simpo_ranking_is_the_mean_over_its_pairs():
    # Mean log-probs -2, -3, -3 (column 0 best); beta 1, gamma 0. Pairs (0,1) and (0,2) have
    # margin 1, pair (1,2) margin 0.
    logps = ranked([[-2.0, -6.0, -3.0]], lengths=[[1, 2, 1]])
    assert loss("simpo", logps, 1.0, gamma=0.0) == pytest.approx(
        [(2 * -logsig(1.0) - logsig(0.0)) / 3]
    )


def test_cpo_by_hand():
    # Row 0: -log sigmoid(0.1 * (-10 - -14)) + alpha * 10 / 4
    expected = [-logsig(0.4) + 2.5, -logsig(0.1) + 2.5]
    assert loss("cpo", PAIRS) == pytest.approx(expected)
    assert loss("cpo", PAIRS, alpha=0.0) == pytest.approx([-logsig(0.4), -logsig(0.1)])
    # K = 3, sums -2, -6, -3: pair margins 4, 1, -3; NLL of the best: 2 / 2 tokens
    k3 = ranked([[-2.0, -6.0, -3.0]], lengths=[[2, 3, 1]])
    expected = (-logsig(0.4) - logsig(0.1) - logsig(-0.3)) / 3 + 1.0
    assert loss("cpo", k3) == pytest.approx([expected])


def log_odds(p: float) -> float:
    """log(P / (1 - P)) with P = e^p."""
    return p - math.log(1 - math.exp(p))


def test_orpo_by_hand():
    # Row 0: mean log-probs -10/4 = -2.5 (chosen), -14/7 = -2 (rejected)
    # Row 1: -5/2 = -2.5, -6/3 = -2
    row = 2.5 - 0.1 * logsig(log_odds(-2.5) - log_odds(-2.0))
    assert loss("orpo", PAIRS) == pytest.approx([row, row])
    # K = 3, mean log-probs -1, -3, -0.5: odds ratios over pairs (0,1), (0,2), (1,2)
    k3 = ranked([[-2.0, -6.0, -0.5]], lengths=[[2, 2, 1]])
    lo = [log_odds(p) for p in (-1.0, -3.0, -0.5)]
    ratio = -(logsig(lo[0] - lo[1]) + logsig(lo[0] - lo[2]) + logsig(lo[1] - lo[2])) / 3
    assert loss("orpo", k3, 0.5) == pytest.approx([1.0 + 0.5 * ratio])


def test_orpo_is_finite_at_probability_one():
    assert all(math.isfinite(x) for x in loss("orpo", ranked([[0.0, 0.0]])))


def test_unlikelihood_by_hand_with_gradient():
    # PAIRS, both rows: mean log-probs p_w = -2.5 (-10/4, -5/2), p_l = -2 (-14/7, -6/3);
    #   loss = 2.5 - alpha * log(1 - e^-2) = 2.5 + alpha * 0.1454134578...
    assert loss("unlikelihood", PAIRS, alpha=0.5) == pytest.approx([2.5727067289] * 2)
    assert loss("unlikelihood", PAIRS, alpha=0.0) == pytest.approx([2.5, 2.5])  # plain SFT
    # K = 3: p = -2, -0.5, -0.5; the mean of the two unlikelihood terms -log(1 - e^-0.5)
    k3 = ranked([[-6.0, -1.0, -1.5]], lengths=[[3, 2, 3]])
    assert loss("unlikelihood", k3) == pytest.approx([2.0 + 0.9327521296])
    # Gradient: p_w = -4/2, p_l = -2/2. d/dlogp_w = -1/2;
    #   d/dlogp_l = (1/2) * e^-1 / (1 - e^-1) = 0.2909883534 (alpha 1).
    policy = torch.tensor([[-4.0, -2.0]], dtype=torch.float64, requires_grad=True)
    logps = RankedLogps(policy, None, torch.tensor([[2, 2]]))
    get_preference_loss("unlikelihood")(logps, 0.1).sum().backward()
    assert policy.grad.tolist()[0] == pytest.approx([-0.5, 0.2909883534])


def test_unlikelihood_is_finite_at_probability_one_and_checks_alpha():
    assert all(math.isfinite(x) for x in loss("unlikelihood", ranked([[0.0, 0.0]])))
    with pytest.raises(ValueError, match="unlikelihood: alpha"):
        loss("unlikelihood", PAIRS, alpha=-0.5)


REFERENCE_FREE = ["sft", "simpo", "cpo", "orpo", "unlikelihood"]


@pytest.mark.parametrize("name", REFERENCE_FREE)
def test_reference_free_losses_read_no_reference_and_say_so(name):
    entry = get_preference_loss(name)
    assert entry.needs_reference is False and entry.uses_lengths is True and entry.ranking
    with_reference = RankedLogps(PAIRS.policy, torch.full_like(PAIRS.policy, 7.0), PAIRS.lengths)
    without = RankedLogps(PAIRS.policy, None, PAIRS.lengths)
    torch.testing.assert_close(entry(with_reference, 0.5), entry(without, 0.5))


PAIR_LOSSES = [
    "robust",
    "exo_pair",
    "nca_pair",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "rpo",
]


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_pair_losses_need_a_reference_and_refuse_rankings(name):
    entry = get_preference_loss(name)
    assert entry.needs_reference is True and entry.ranking is False
    k3 = ranked([[-1.0, -2.0, -3.0]], [[-1.0, -2.0, -3.0]])
    with pytest.raises(ValueError, match=f"{name}.*K=3.*plackett_luce"):
        entry(k3, 0.1)
    with pytest.raises(ValueError, match=f"{name}.*reference"):
        entry(ranked([[-1.0, -2.0]]), 0.1)
    with pytest.raises(ValueError, match="beta"):
        entry(PAIRS, 0.0)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("robust", {"label_smoothing": 0.5}, r"robust: label_smoothing must be in \[0, 0.5\)"),
        ("exo_pair", {"label_smoothing": 0.0}, r"exo_pair: label_smoothing must be in \(0, 0.5\)"),
        ("aot", {"label_smoothing": -0.1}, "aot: label_smoothing"),
        ("bco_pair", {"delta": math.nan}, "bco_pair: delta"),
        ("discopop", {"tau": 0.0}, "discopop: tau"),
        ("rpo", {"alpha": -1.0}, "rpo: alpha"),
        ("cpo", {"alpha": math.inf}, "cpo: alpha"),
        ("simpo", {"gamma": math.nan}, "simpo: gamma"),
    ],
)
def test_bad_options_name_the_loss_and_option(name, options, match):
    with pytest.raises(ValueError, match=match):
        get_preference_loss(name)(PAIRS, 0.1, **options)


def test_metadata_declares_what_each_loss_reads():
    uses_nll = {e.name for e in preference_losses.items() if e.uses_nll}
    assert {"rpo", "sft", "cpo", "orpo", "unlikelihood"} <= uses_nll and "sigmoid" not in uses_nll
    ranking = {e.name for e in preference_losses.items() if e.ranking}
    assert {"plackett_luce", "sft", "simpo", "cpo", "orpo"} <= ranking
    assert not ranking & {"sigmoid", "ipo", "hinge", *PAIR_LOSSES}


# --- weighted sums ------------------------------------------------------------------------------


def test_weighted_sum_by_hand():
    combined = get_preference_loss({"sigmoid": 1.0, "sft": 0.2})
    assert combined.name == "1*sigmoid + 0.2*sft"
    expected = [-logsig(0.5) + 0.2 * 2.5, -logsig(0.1) + 0.2 * 2.5]
    assert combined(PAIRS, 0.1).tolist() == pytest.approx(expected)
    # the same as RPO with alpha = 0.2
    assert expected == pytest.approx(loss("rpo", PAIRS, alpha=0.2))
    assert dict(combined.metadata) == {
        "needs_reference": True,
        "uses_lengths": True,
        "uses_nll": True,
        "ranking": False,
        "unpaired": False,
    }
    assert get_preference_loss({"simpo": 1.0, "sft": 1.0}).needs_reference is False
    assert get_preference_loss({"simpo": 1.0, "sft": 1.0}).ranking is True


def test_weighted_sum_hands_each_option_to_the_terms_that_take_it():
    combined = get_preference_loss({"sigmoid": 0.5, "aot": 2.0, "sft": 1.0})
    got = combined(PAIRS, 0.1, label_smoothing=0.1).tolist()
    eps = 0.1
    sigmoid = [-(1 - eps) * logsig(h) - eps * logsig(-h) for h in H]
    aot = [-(1 - eps) * logsig(z) - eps * logsig(-z) for z in (0.2, 0.4)]
    expected = [0.5 * s + 2.0 * a + 2.5 for s, a in zip(sigmoid, aot, strict=True)]
    assert got == pytest.approx(expected)
    with pytest.raises(TypeError, match="no loss of .* takes the option 'gamma'.*sigmoid: label"):
        combined(PAIRS, 0.1, gamma=1.0)


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ({}, ValueError, "non-empty mapping"),
        ({"sigmoid": "a lot"}, ValueError, "weight of preference loss 'sigmoid'"),
        ({"sigmoid": math.nan}, ValueError, "weight of preference loss 'sigmoid'"),
        ({"sigmoid": 1.0, "no_such_loss": 1.0}, KeyError, "no_such_loss.*known: aot"),
    ],
)
def test_bad_weighted_sums_say_what_is_wrong(spec, error, match):
    with pytest.raises(error, match=match):
        get_preference_loss(spec)

"""DPO variants with a reference model, on pairs: one registered function per loss.

Notation (as in ``preference.py``): for a pair (y_w chosen, y_l rejected) the log-ratios are
rho_w = log pi(y_w|x) - log pi_ref(y_w|x) and rho_l likewise, log-probs summed over response
tokens; the implicit rewards are r_w = beta * rho_w, r_l = beta * rho_l, and h = r_w - r_l.
Every function takes ``RankedLogps`` with K == 2 (column 0 chosen) and a reference, and returns
per-pair losses [B]; K > 2 is refused (``plackett_luce`` is the ranking form of DPO).

Each docstring cites the paper the formula comes from and, where TRL's ``DPOTrainer`` (1.16) has
the loss, its ``loss_type``; ``tests/algorithms/test_trl_parity.py`` checks them against TRL.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf.algorithms.preference import check_beta, pair_logps
from rlhf.algorithms.registry import register_preference_loss
from rlhf.algorithms.types import RankedLogps


def _log_ratios(logps: RankedLogps, beta: float, name: str) -> tuple[Tensor, Tensor]:
    """(rho_w, rho_l), each [B], after checking beta, K == 2 and the reference."""
    check_beta(beta)
    policy_w, policy_l, ref_w, ref_l = pair_logps(logps, name)
    return policy_w - ref_w, policy_l - ref_l


def _check_smoothing(name: str, eps: float, low_open: bool = False) -> None:
    ok = 0.0 < eps < 0.5 if low_open else 0.0 <= eps < 0.5
    if not (isinstance(eps, (int, float)) and ok):
        interval = "(0, 0.5)" if low_open else "[0, 0.5)"
        raise ValueError(f"{name}: label_smoothing must be in {interval}, got {eps!r}")


def _smoothed_sigmoid(z: Tensor, eps: float) -> Tensor:
    """-(1 - eps) log sigmoid(z) - eps log sigmoid(-z): the sigmoid loss on labels flipped with
    probability eps."""
    return -(1.0 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


@register_preference_loss("robust", needs_reference=True)
def robust_loss(logps: RankedLogps, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO: Aligning Language Models with Noisy
    Feedback"), for labels flipped
    with a known probability eps = ``label_smoothing`` in [0, 0.5):

        loss = [(1 - eps) * -log sigmoid(h) - eps * -log sigmoid(-h)] / (1 - 2 eps)

    an unbiased estimate of the clean-label DPO loss (unlike conservative DPO, ``sigmoid`` with
    label_smoothing, which is biased toward a finite margin). eps = 0 is DPO. TRL: ``robust``.

    Shapes: logps.policy, logps.reference [B, 2] -> losses [B].
    """
    _check_smoothing("robust", label_smoothing)
    rho_w, rho_l = _log_ratios(logps, beta, "robust")
    h = beta * (rho_w - rho_l)
    eps = label_smoothing
    return (-(1.0 - eps) * F.logsigmoid(h) + eps * F.logsigmoid(-h)) / (1.0 - 2.0 * eps)


@register_preference_loss("exo_pair", needs_reference=True)
def exo_pair_loss(logps: RankedLogps, beta: float, label_smoothing: float = 1e-3) -> Tensor:
    """EXO on pairs (Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model
    Alignment", eq. 16 with K = 2): the reverse KL from the policy's pair distribution
    q = softmax(r_w, r_l) = (sigmoid(h), sigmoid(-h)) to the smoothed label
    p = (1 - eps, eps), eps = ``label_smoothing`` in (0, 0.5) (the paper uses 1e-3):

        loss = q_w (log q_w - log(1 - eps)) + q_l (log q_l - log eps)

    Mode-seeking where DPO's forward KL is mean-seeking. TRL: ``exo_pair``.

    Shapes: logps.policy, logps.reference [B, 2] -> losses [B].
    """
    _check_smoothing("exo_pair", label_smoothing, low_open=True)
    rho_w, rho_l = _log_ratios(logps, beta, "exo_pair")
    h = beta * (rho_w - rho_l)
    eps = label_smoothing
    log_q_w, log_q_l = F.logsigmoid(h), F.logsigmoid(-h)
    return log_q_w.exp() * (log_q_w - math.log1p(-eps)) + log_q_l.exp() * (log_q_l - math.log(eps))


@register_preference_loss("nca_pair", needs_reference=True)
def nca_pair_loss(logps: RankedLogps, beta: float) -> Tensor:
    """NCA on pairs (Chen et al. 2024, "Noise Contrastive Alignment of Language Models with
    Explicit Rewards", the pairwise-preference NCA loss):

        loss = -log sigmoid(r_w) - 1/2 log sigmoid(-r_w) - 1/2 log sigmoid(-r_l)

    Each response's absolute reward counts, not only the margin: the chosen response's
    likelihood is pushed up rather than only away from the rejected one. TRL: ``nca_pair``.

    Shapes: logps.policy, logps.reference [B, 2] -> losses [B].
    """
    rho_w, rho_l = _log_ratios(logps, beta, "nca_pair")
    r_w, r_l = beta * rho_w, beta * rho_l
    return -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)


@register_preference_loss("bco_pair", needs_reference=True)
def bco_pair_loss(logps: RankedLogps, beta: float, delta: float | None = None) -> Tensor:
    """BCO on pairs (Jung et al. 2024, "Binary Classifier Optimization for Large Language Model
    Alignment"): a binary classifier with logit r - delta, the chosen response labelled
    1 and the rejected 0:

        loss = -log sigmoid(r_w - delta) - log sigmoid(-(r_l - delta))

    The paper's reward shift delta is a running mean of the rewards over training. Here a loss is
    a pure function of one batch, so ``delta=None`` (default) takes the mean of all 2B rewards
    of the batch it is given (a micro batch; no gradient through it), which is what a running
    mean starts from; a number fixes delta. ``delta=0`` is TRL 1.16's ``bco_pair``, which has
    dropped the shift.

    Shapes: logps.policy, logps.reference [B, 2] -> losses [B].
    """
    rho_w, rho_l = _log_ratios(logps, beta, "bco_pair")
    r_w, r_l = beta * rho_w, beta * rho_l
    if delta is None:
        shift = torch.cat([r_w, r_l]).detach().mean()
    elif isinstance(delta, (int, float)) and math.isfinite(delta):
        shift = delta
    else:
        raise ValueError(f"bco_pair: delta must be a finite number or None, got {delta!r}")
    return -F.logsigmoid(r_w - shift) - F.logsigmoid(-(r_l - shift))


@register_preference_loss("sppo_hard", needs_reference=True)
def sppo_hard_loss(logps: RankedLogps, beta: float) -> Tensor:
    """SPPO with hard labels (Wu et al. 2024, "Self-Play Preference Optimization for Language
    Model Alignment", eq. 4.7 with eta = 1/beta and win probability P = 1 for the chosen, 0 for
    the rejected response): each log-ratio is regressed onto eta (P - 1/2),

        loss = (rho_w - 1/(2 beta))^2 + (rho_l + 1/(2 beta))^2

    TRL: ``sppo_hard``.

    Shapes: logps.policy, logps.reference [B, 2] -> losses [B].
    """
    rho_w, rho_l = _log_ratios(logps, beta, "sppo_hard")
    target = 0.5 / beta
    return (rho_w - target).square() + (rho_l + target).square()


@register_preference_loss("aot", needs_reference=True)
def aot_loss(logps: RankedLogps, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """AOT, paired (Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal
    Transport", with the logistic loss): the policy's margins
    m_i = log pi(y_w) - log pi(y_l) should dominate the reference's m_ref_i in distribution, so
    both are sorted over the batch and compared quantile by quantile:

        d_(i) = sort(m)_i - sort(m_ref)_i,
        loss_i = -(1 - eps) log sigmoid(beta d_(i)) - eps log sigmoid(-beta d_(i))

    with eps = ``label_smoothing``. Row i of the result is the i-th quantile, not pair i: the
    loss is a function of the whole (micro) batch, and only its mean is meaningful. TRL: ``aot``.

    Shapes: logps.policy, logps.reference [B, 2] -> losses [B] (in quantile order).
    """
    _check_smoothing("aot", label_smoothing)
    check_beta(beta)
    policy_w, policy_l, ref_w, ref_l = pair_logps(logps, "aot")
    sorted_policy = torch.sort(policy_w - policy_l, dim=0).values
    sorted_ref = torch.sort(ref_w - ref_l, dim=0).values
    return _smoothed_sigmoid(beta * (sorted_policy - sorted_ref), label_smoothing)


@register_preference_loss("aot_unpaired", needs_reference=True)
def aot_unpaired_loss(logps: RankedLogps, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """AOT, unpaired (Melnyk et al. 2024, with the logistic loss): the distribution of
    chosen log-ratios should dominate that of rejected ones, whichever pairs they came from:

        d_(i) = sort(rho_w)_i - sort(rho_l)_i,
        loss_i = -(1 - eps) log sigmoid(beta d_(i)) - eps log sigmoid(-beta d_(i))

    Row i is the i-th quantile (see ``aot``). TRL: ``aot_unpaired``.

    Shapes: logps.policy, logps.reference [B, 2] -> losses [B] (in quantile order).
    """
    _check_smoothing("aot_unpaired", label_smoothing)
    rho_w, rho_l = _log_ratios(logps, beta, "aot_unpaired")
    delta = torch.sort(rho_w, dim=0).values - torch.sort(rho_l, dim=0).values
    return _smoothed_sigmoid(beta * delta, label_smoothing)


@register_preference_loss("apo_zero", needs_reference=True)
def apo_zero_loss(logps: RankedLogps, beta: float) -> Tensor:
    """APO-zero (D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive
    Revisions", eq. 7): for chosen responses better than the model's own, push the chosen
    likelihood up and the rejected one down, each anchored at the reference:

        loss = 1 - sigmoid(r_w) + sigmoid(r_l)

    TRL: ``apo_zero``.

    Shapes: logps.policy, logps.reference [B, 2] -> losses [B].
    """
    rho_w, rho_l = _log_ratios(logps, beta, "apo_zero")
    return 1.0 - torch.sigmoid(beta * rho_w) + torch.sigmoid(beta * rho_l)


@register_preference_loss("apo_down", needs_reference=True)
def apo_down_loss(logps: RankedLogps, beta: float) -> Tensor:
    """APO-down (D'Oosterlinck et al. 2024, eq. 8): for chosen responses worse than the model's
    own, push both likelihoods down, the rejected one more:

        loss = sigmoid(r_w) + 1 - sigmoid(r_w - r_l)

    TRL: ``apo_down``.

    Shapes: logps.policy, logps.reference [B, 2] -> losses [B].
    """
    rho_w, rho_l = _log_ratios(logps, beta, "apo_down")
    return torch.sigmoid(beta * rho_w) + 1.0 - torch.sigmoid(beta * (rho_w - rho_l))


@register_preference_loss("discopop", needs_reference=True)
def discopop_loss(logps: RankedLogps, beta: float, tau: float = 0.05) -> Tensor:
    """DiscoPOP, the log-ratio modulated loss (Lu et al. 2024, "Discovering Preference
    Optimization Algorithms with and for Large Language Models", eq. 5): a blend of the
    logistic (DPO) and exponential losses, weighted by sigmoid(h / tau):

        m = sigmoid(h / tau),  loss = (1 - m) * -log sigmoid(h) + m * exp(-h)

    ``tau`` > 0 is the temperature (the paper's 0.05). TRL: ``discopop`` (``discopop_tau``).

    Shapes: logps.policy, logps.reference [B, 2] -> losses [B].
    """
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"discopop: tau must be a finite number > 0, got {tau!r}")
    rho_w, rho_l = _log_ratios(logps, beta, "discopop")
    h = beta * (rho_w - rho_l)
    modulation = torch.sigmoid(h / tau)
    return (1.0 - modulation) * -F.logsigmoid(h) + modulation * torch.exp(-h)


@register_preference_loss("rpo", needs_reference=True, uses_lengths=True, uses_nll=True)
def rpo_loss(logps: RankedLogps, beta: float, alpha: float = 1.0) -> Tensor:
    """RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization"): DPO plus
    ``alpha`` times the chosen response's negative log-likelihood per token,

        loss = -log sigmoid(h) - alpha * log pi(y_w|x) / |y_w|

    The same as ``{sigmoid: 1, sft: alpha}``. TRL 1.16 writes it as ``loss_type=["sigmoid",
    "sft"]``, ``loss_weights=[1, alpha]``, whose NLL averages over all chosen tokens of the batch
    rather than per response: the two agree when all chosen responses have the same length.

    Shapes: logps.policy, logps.reference, logps.lengths [B, 2] -> losses [B].
    """
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"rpo: alpha must be a finite number >= 0, got {alpha!r}")
    rho_w, rho_l = _log_ratios(logps, beta, "rpo")
    nll = -logps.policy[:, 0] / logps.lengths[:, 0].clamp(min=1).to(logps.policy.dtype)
    return -F.logsigmoid(beta * (rho_w - rho_l)) + alpha * nll

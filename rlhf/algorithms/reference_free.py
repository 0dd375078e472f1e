"""Preference losses without a reference model, and the SFT term: one registered function each.

They read the policy's summed log-probs and the response lengths only (registered with
``needs_reference=False``, so offline DPO with them starts no reference model). With
p(y) = log pi(y|x) / |y|, the mean log-prob per token, the length-normalised negative
log-likelihood of a response is -p(y) = -logps.policy / logps.lengths.

Rankings (K > 2, column 0 best): the pairwise terms are averaged over the K(K-1)/2 ordered pairs
(j, k), j < k, which for K = 2 is the pair's own term; the NLL term is the best response's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf.algorithms.preference import check_beta
from rlhf.algorithms.registry import register_preference_loss
from rlhf.algorithms.types import RankedLogps


def mean_logps(logps: RankedLogps) -> Tensor:
    """p = log pi(y|x) / |y| [B, K]: the mean log-prob per response token."""
    return logps.policy / logps.lengths.clamp(min=1).to(logps.policy.dtype)


def _ordered_pairs(values: Tensor) -> tuple[Tensor, Tensor]:
    """(values of the better, values of the worse response) [B, K(K-1)/2] of every ordered
    pair (j, k), j < k, of a [B, K] ranking (column 0 best)."""
    better, worse = torch.triu_indices(values.shape[1], values.shape[1], offset=1)
    return values[:, better], values[:, worse]


def _check_number(name: str, option: str, value: float, minimum: float | None = None) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (minimum is not None and value < minimum):
        bound = f" >= {minimum:g}" if minimum is not None else ""
        raise ValueError(f"{name}: {option} must be a finite number{bound}, got {value!r}")


@register_preference_loss(
    "sft", needs_reference=False, uses_lengths=True, uses_nll=True, ranking=True
)
def sft_loss(logps: RankedLogps, beta: float) -> Tensor:
    """The SFT term: the best (chosen) response's negative log-likelihood per token,

        loss = -log pi(y_1|x) / |y_1|

    ``beta`` is not read. Alone it is supervised fine-tuning on the chosen responses; its use is
    in a weighted sum, e.g. ``loss.name: {sigmoid: 1.0, sft: 0.2}`` (RPO). TRL: ``sft``, which
    averages over all chosen tokens of the batch instead of per response (the same when all
    chosen responses have the same length).

    Shapes: logps.policy, logps.lengths [B, K] -> losses [B].
    """
    return -mean_logps(logps)[:, 0]


@register_preference_loss("simpo", needs_reference=False, uses_lengths=True, ranking=True)
def simpo_loss(logps: RankedLogps, beta: float, gamma: float = 0.5) -> Tensor:
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward", eq. 6): the implicit reward is the mean log-prob per token, beta * p(y), with a
    target margin ``gamma``:

        loss = -log sigmoid(beta * (p(y_w) - p(y_l)) - gamma)

    No reference model, and no advantage for long responses. Rankings: the mean over ordered
    pairs. TRL: ``CPOTrainer`` with ``loss_type="simpo"``, ``cpo_alpha=0``, ``simpo_gamma``.

    Shapes: logps.policy, logps.lengths [B, K] -> losses [B]. ``logps.reference`` is not read.
    """
    check_beta(beta)
    _check_number("simpo", "gamma", gamma)
    better, worse = _ordered_pairs(mean_logps(logps))
    return -F.logsigmoid(beta * (better - worse) - gamma).mean(dim=1)


@register_preference_loss(
    "cpo", needs_reference=False, uses_lengths=True, uses_nll=True, ranking=True
)
def cpo_loss(logps: RankedLogps, beta: float, alpha: float = 1.0) -> Tensor:
    """CPO (Xu et al. 2024, "Contrastive Preference Optimization: Pushing the Boundaries of LLM
    Performance in Machine Translation", eq. 3 plus the NLL term of its final objective): DPO
    with a uniform reference (summed log-probs), plus ``alpha`` times the chosen response's
    NLL per token:

        loss = -log sigmoid(beta * (log pi(y_w) - log pi(y_l))) - alpha * p(y_w)

    Rankings: the preference term's mean over ordered pairs, the NLL of the best response.
    TRL: ``CPOTrainer`` with ``loss_type="sigmoid"`` and ``cpo_alpha`` (its NLL averages over all
    chosen tokens of the batch: the same when all chosen responses have the same length).

    Shapes: logps.policy, logps.lengths [B, K] -> losses [B].
    """
    check_beta(beta)
    _check_number("cpo", "alpha", alpha, minimum=0.0)
    better, worse = _ordered_pairs(logps.policy)
    prefer = -F.logsigmoid(beta * (better - worse)).mean(dim=1)
    return prefer - alpha * mean_logps(logps)[:, 0]


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, switching form at -ln 2 to keep precision."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


@register_preference_loss(
    "orpo", needs_reference=False, uses_lengths=True, uses_nll=True, ranking=True
)
def orpo_loss(logps: RankedLogps, beta: float) -> Tensor:
    """ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference
    Model", eqs. 2-7): the SFT loss plus beta (the paper's lambda) times the log odds ratio
    loss, with the odds of a response odds(y) = P(y) / (1 - P(y)) and P(y) = exp(p(y)) its
    per-token (geometric mean) likelihood:

        log odds(y) = p(y) - log(1 - exp(p(y)))
        loss = -p(y_w) - beta * log sigmoid(log odds(y_w) - log odds(y_l))

    A response of probability 1 (p = 0) has infinite odds: p is clamped to <= -1e-6.
    Rankings: the odds-ratio term's mean over ordered pairs, the NLL of the best response.
    TRL: ``ORPOTrainer`` (its NLL averages over all chosen tokens of the batch: the same when
    all chosen responses have the same length).

    Shapes: logps.policy, logps.lengths [B, K] -> losses [B].
    """
    check_beta(beta)
    p = mean_logps(logps)
    clamped = p.clamp(max=-1e-6)
    log_odds = clamped - _log1mexp(clamped)
    better, worse = _ordered_pairs(log_odds)
    odds_ratio = -F.logsigmoid(better - worse).mean(dim=1)
    return -p[:, 0] + beta * odds_ratio


@register_preference_loss(
    "unlikelihood", needs_reference=False, uses_lengths=True, uses_nll=True, ranking=True
)
def unlikelihood_loss(logps: RankedLogps, beta: float, alpha: float = 1.0) -> Tensor:
    """Unlikelihood (Welleck et al. 2019, "Neural Text Generation with Unlikelihood
    Training"; the DPO paper's baseline, its section 6 and appendix C): raise the chosen
    response's likelihood and lower the rejected ones', with weight ``alpha`` on the second:

        loss = -p(y_w) - alpha * log(1 - exp(p(y_l)))

    with p(y) the mean log-prob per token, so exp(p(y)) is the response's per-token
    (geometric mean) likelihood, as ORPO's odds use it. Welleck et al. sum log(1 - pi(token))
    over the rejected tokens; a preference loss sees summed log-probs only, so this is the
    same penalty on the geometric mean token. A whole sequence's probability would be so small
    that log(1 - P(y_l)) gives no gradient. p(y_l) is clamped to <= -1e-6 (probability 1 would
    make the term infinite). ``beta`` is not read (the DPO paper sweeps alpha in [0, 1]).
    Rankings: the mean of the unlikelihood term over the K - 1 worse responses.

    Shapes: logps.policy, logps.lengths [B, K] -> losses [B].
    """
    _check_number("unlikelihood", "alpha", alpha, minimum=0.0)
    p = mean_logps(logps)
    unlikely = _log1mexp(p[:, 1:].clamp(max=-1e-6)).mean(dim=1)
    return -p[:, 0] - alpha * unlikely

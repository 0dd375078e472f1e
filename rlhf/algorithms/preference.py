"""Preference losses: DPO and its variants on pairs, Plackett-Luce DPO on rankings.

The implicit reward of a response is r_hat = beta * (log pi(y|x) - log pi_ref(y|x)) (Rafailov et
al. 2023, eq. 5), with log-probs summed over response tokens. For a pair, h = r_hat_w - r_hat_l.

Registered (fixed signature ``fn(logps: RankedLogps, beta, **options) -> losses [B]``):
``sigmoid`` (option ``label_smoothing``), ``ipo``, ``hinge`` (pairs, K == 2) and
``plackett_luce`` (any K >= 2, option ``top_m``). The other DPO variants with a reference are in
``dpo_variants.py``, the losses without one in ``reference_free.py``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf.algorithms.registry import register_preference_loss
from rlhf.algorithms.types import RankedLogps

DPOLossType = Literal["sigmoid", "ipo", "hinge"]
DPO_LOSS_TYPES: tuple[str, ...] = ("sigmoid", "ipo", "hinge")


def check_beta(beta: float) -> None:
    """Raises ValueError unless beta is a finite number > 0."""
    try:
        ok = math.isfinite(float(beta)) and float(beta) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    loss_type: DPOLossType = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair DPO losses and the implicit rewards of both responses.

    All inputs are [B]: log-probs summed over response tokens of the chosen (y_w) and rejected
    (y_l) responses under the policy and the reference. With h = r_hat_w - r_hat_l:

    - ``sigmoid``: -log sigmoid(h) (Rafailov et al. 2023, eq. 7). With ``label_smoothing`` eps
      > 0 it is conservative DPO, labels flipped with probability eps:
      -(1 - eps) log sigmoid(h) - eps log sigmoid(-h); its optimum is h = log((1 - eps) / eps).
    - ``ipo``: (h / beta - 1 / (2 beta))^2 (Azar et al. 2023, eq. 17), the squared distance of
      the log-ratio margin to 1 / (2 beta).
    - ``hinge``: max(0, 1 - h) (SLiC, Zhao et al. 2023, with the reference log-ratio).

    Gradient of ``sigmoid``: -beta * sigmoid(-h) * (grad log pi(y_w) - grad log pi(y_l)).

    Returns:
        losses [B], chosen_rewards [B], rejected_rewards [B]; the rewards are
        beta * (log pi - log pi_ref), detached.
    """
    check_beta(beta)
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(DPO_LOSS_TYPES)}, got {loss_type!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing > 0 and loss_type != "sigmoid":
        raise ValueError(
            f"label_smoothing (conservative DPO) applies to loss_type 'sigmoid' only, got "
            f"loss_type={loss_type!r} with label_smoothing={label_smoothing}"
        )
    shapes = {
        "policy_chosen_logps": tuple(policy_chosen_logps.shape),
        "policy_rejected_logps": tuple(policy_rejected_logps.shape),
        "ref_chosen_logps": tuple(ref_chosen_logps.shape),
        "ref_rejected_logps": tuple(ref_rejected_logps.shape),
    }
    if len(set(shapes.values())) != 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shape mismatch: {listed} must all be the same [B]")

    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    margin = chosen_logratios - rejected_logratios  # h / beta
    h = beta * margin
    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(h)
        if label_smoothing > 0:
            losses = losses - label_smoothing * F.logsigmoid(-h)
    elif loss_type == "ipo":
        losses = (margin - 1.0 / (2.0 * beta)).square()
    else:  # hinge
        losses = torch.relu(1.0 - h)
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return losses, chosen_rewards, rejected_rewards


def plackett_luce_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    beta: float = 0.1,
    top_m: int | None = None,
) -> Tensor:
    """Negative log-likelihood of rankings under Plackett-Luce with the implicit rewards.

    Rankings of K responses per prompt, column 0 the most preferred (Rafailov et al. 2023,
    eq. 18 and appendix A.3). With s_k = beta * (log pi(y_k) - log pi_ref(y_k)):

        loss = -sum_{k=1..M} [ s_k - log sum_{j=k..K} exp(s_j) ],  M = min(top_m, K - 1)

    (the k = K term is 0). ``top_m`` truncates to the top M positions of the ranking; None uses
    the full ranking. For K = 2 this is exactly the sigmoid DPO loss.

    Shapes: policy_logps, ref_logps [B, K] (summed response log-probs) -> losses [B].
    """
    check_beta(beta)
    if policy_logps.dim() != 2 or policy_logps.shape[1] < 2:
        raise ValueError(
            f"policy_logps must be [B, K] with K >= 2 ranked responses, got "
            f"{tuple(policy_logps.shape)}"
        )
    if ref_logps.shape != policy_logps.shape:
        raise ValueError(
            f"shape mismatch: ref_logps {tuple(ref_logps.shape)} must match policy_logps "
            f"{tuple(policy_logps.shape)}"
        )
    num_ranked = policy_logps.shape[1]
    if top_m is None:
        top_m = num_ranked - 1
    elif isinstance(top_m, bool) or not isinstance(top_m, int) or top_m < 1:
        raise ValueError(f"top_m must be a positive int or None, got {top_m!r}")
    top_m = min(top_m, num_ranked - 1)
    s = beta * (policy_logps - ref_logps)  # [B, K]
    # log sum_{j >= k} exp(s_j) for every k: a reversed cumulative logsumexp.
    suffix_lse = torch.logcumsumexp(s.flip(1), dim=1).flip(1)
    return -(s - suffix_lse)[:, :top_m].sum(dim=1)


@torch.no_grad()
def preference_metrics(logps: RankedLogps, beta: float) -> dict[str, float]:
    """The metrics every preference trainer logs, as floats averaged over the batch.

    With r_hat_k = beta * (log pi - log pi_ref) of column k (log pi alone if the reference is
    None), "chosen" is column 0 and "rejected" the last column:
    ``rewards/chosen``, ``rewards/rejected``: mean r_hat; ``rewards/margins``: mean h =
    r_hat_chosen - r_hat_rejected; ``rewards/accuracies``: fraction of adjacent pairs (k, k+1)
    ordered correctly (r_hat_k > r_hat_{k+1}), which for K == 2 is the fraction with h > 0;
    ``logps/chosen``, ``logps/rejected``: mean policy log-probs.
    """
    check_beta(beta)
    policy = logps.policy.float()
    rewards = policy if logps.reference is None else policy - logps.reference.float()
    rewards = beta * rewards
    chosen, rejected = rewards[:, 0], rewards[:, -1]
    correct = (rewards[:, :-1] > rewards[:, 1:]).float()
    return {
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/margins": (chosen - rejected).mean().item(),
        "rewards/accuracies": correct.mean().item(),
        "logps/chosen": policy[:, 0].mean().item(),
        "logps/rejected": policy[:, -1].mean().item(),
    }


# --- registrations: the fixed signature fn(logps: RankedLogps, beta, **options) -----------------


def pair_logps(logps: RankedLogps, loss_name: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(policy chosen, policy rejected, reference chosen, reference rejected), each [B], of a
    K == 2 input; ValueError naming ``loss_name`` for rankings or a missing reference."""
    if logps.num_ranked != 2:
        raise ValueError(
            f"preference loss {loss_name!r} takes pairs (K == 2) but got K={logps.num_ranked} "
            "ranked responses; use 'plackett_luce' for rankings, or a pair strategy to turn the "
            "rankings into pairs"
        )
    reference = reference_logps(logps, loss_name)
    return logps.policy[:, 0], logps.policy[:, 1], reference[:, 0], reference[:, 1]


def reference_logps(logps: RankedLogps, loss_name: str) -> Tensor:
    """``logps.reference`` [B, K]; ValueError naming ``loss_name`` if it is None."""
    if logps.reference is None:
        raise ValueError(f"preference loss {loss_name!r} needs reference log-probs (got None)")
    return logps.reference


@register_preference_loss("sigmoid", needs_reference=True)
def _sigmoid(logps: RankedLogps, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """DPO (label_smoothing > 0: conservative DPO); see ``dpo_loss``."""
    losses, _, _ = dpo_loss(*pair_logps(logps, "sigmoid"), beta, "sigmoid", label_smoothing)
    return losses


@register_preference_loss("ipo", needs_reference=True)
def _ipo(logps: RankedLogps, beta: float) -> Tensor:
    """IPO; see ``dpo_loss``."""
    losses, _, _ = dpo_loss(*pair_logps(logps, "ipo"), beta, "ipo")
    return losses


@register_preference_loss("hinge", needs_reference=True)
def _hinge(logps: RankedLogps, beta: float) -> Tensor:
    """SLiC-style hinge; see ``dpo_loss``."""
    losses, _, _ = dpo_loss(*pair_logps(logps, "hinge"), beta, "hinge")
    return losses


@register_preference_loss("plackett_luce", needs_reference=True, ranking=True)
def _plackett_luce(logps: RankedLogps, beta: float, top_m: int | None = None) -> Tensor:
    """Plackett-Luce DPO on full (or top-M) rankings; see ``plackett_luce_loss``."""
    return plackett_luce_loss(logps.policy, reference_logps(logps, "plackett_luce"), beta, top_m)

"""RRHF, a ranking loss without a reference model (Yuan et al. 2023)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rlhf.algorithms import RankedLogps, register_preference_loss


@register_preference_loss(
    "rrhf", needs_reference=False, uses_lengths=True, uses_nll=True, ranking=True
)
def rrhf_loss(logps: RankedLogps, beta: float, sft_weight: float = 1.0) -> Tensor:
    """Per-example RRHF losses (Yuan et al. 2023, "RRHF: Rank Responses to Align Language
    Models with Human Feedback without tears"):

        loss = beta * sum_{j < k} max(0, p_k - p_j) - sft_weight * p_1

    p_k = log pi(y_k|x) / |y_k| is the mean log-prob per token of the response ranked k-th
    (column 0 best): a hinge on every ordered pair whose order the policy gets wrong, plus the
    best response's negative log-likelihood per token; beta = sft_weight = 1 weigh the two terms
    as the paper does. Any K >= 2.

    Shapes: logps.policy and logps.lengths [B, K] (summed log-probs, response token counts)
    -> losses [B]. ``logps.reference`` is not read.
    """
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"rrhf: beta must be a finite number > 0, got {beta!r}")
    if not (math.isfinite(sft_weight) and sft_weight >= 0):
        raise ValueError(f"rrhf: sft_weight must be a finite number >= 0, got {sft_weight!r}")
    p = logps.policy / logps.lengths.clamp(min=1).to(logps.policy.dtype)  # [B, K]
    better, worse = torch.triu_indices(logps.num_ranked, logps.num_ranked, offset=1)
    ranking = torch.relu(p[:, worse] - p[:, better]).sum(dim=1)  # [B]
    return beta * ranking - sft_weight * p[:, 0]

"""SimPO, a length-normalised preference loss without a reference model (Meng et al. 2024)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf.algorithms import RankedLogps, register_preference_loss


@register_preference_loss("simpo", needs_reference=False)
def simpo_loss(logps: RankedLogps, beta: float, gamma: float = 0.5) -> Tensor:
    """Per-example SimPO losses: -log sigmoid(beta * (r_w - r_l) - gamma) (Meng et al. eq. 6).

    The implicit reward of a response is its mean log-prob per token, r = log pi(y|x) / |y|:
    no reference model, and no advantage for long responses. ``gamma`` is the target margin
    between the chosen and the rejected reward. A ranking of K > 2 responses (column 0 best)
    is scored as the mean of this loss over its K(K-1)/2 ordered pairs, which for K = 2 is the
    pair's loss itself.

    Shapes: logps.policy and logps.lengths [B, K] (summed log-probs, response token counts)
    -> losses [B]. ``logps.reference`` is not read.
    """
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"simpo: beta must be a finite number > 0, got {beta!r}")
    if not math.isfinite(gamma):
        raise ValueError(f"simpo: gamma must be a finite number, got {gamma!r}")
    rewards = logps.policy / logps.lengths.clamp(min=1).to(logps.policy.dtype)  # [B, K]
    better, worse = torch.triu_indices(logps.num_ranked, logps.num_ranked, offset=1)
    margins = beta * (rewards[:, better] - rewards[:, worse]) - gamma  # [B, K(K-1)/2]
    return -F.logsigmoid(margins).mean(dim=1)

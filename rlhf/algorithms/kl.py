"""KL estimators, the KL-penalised per-token reward of RLHF, and KL coefficient controllers."""

from __future__ import annotations

from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

KLKind = Literal["k1", "k2", "k3"]
KL_KINDS: tuple[str, ...] = ("k1", "k2", "k3")


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: KLKind = "k1") -> Tensor:
    """Per-sample estimate of KL(pi || pi_ref) from log-probs of tokens sampled from pi.

    Elementwise on any shape (e.g. [B, T]). With log_ratio = log pi - log pi_ref:
      k1 = log_ratio                            unbiased, can be negative
      k2 = log_ratio**2 / 2                     biased, low variance, >= 0
      k3 = (ratio - 1) - log ratio, ratio = pi_ref / pi = exp(-log_ratio)
                                                unbiased, >= 0 (Schulman, "Approximating KL")
    """
    if logp.shape != ref_logp.shape:
        raise ValueError(
            f"logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} must have the "
            "same shape"
        )
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind == "k3":
        # (ratio - 1) - log(ratio) with log(ratio) = -log_ratio; expm1 keeps precision near 0.
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kind must be one of {', '.join(KL_KINDS)}, got {kind!r}")


def sequence_kl(logits: Tensor, ref_logits: Tensor, mask: Tensor) -> Tensor:
    """KL(pi || pi_ref) of whole responses, one estimate per sampled response, from full logits.

        sequence_kl = sum_t mask_t * KL( pi(.|x, y_<t) || pi_ref(.|x, y_<t) )

    By the chain rule its mean over responses y ~ pi is the sequence-level KL, like the mean of
    summed k1, but each term is an exact KL over the vocabulary instead of the log-ratio of the
    one sampled token: every estimate is >= 0 and a few unlikely sampled tokens cannot dominate
    the mean (the variance left is only that of the prefixes). Needs both models' logits.

    Args:
        logits, ref_logits: [B, T, V] next-token logits of the policy and the reference at the
            positions that predict response tokens.
        mask: [B, T] 1 where the position predicts a response token, 0 elsewhere.

    Returns:
        [B] summed per-token KL, detached from neither input (call under ``no_grad`` to save).
    """
    if logits.shape != ref_logits.shape or mask.shape != logits.shape[:2]:
        raise ValueError(
            f"logits {tuple(logits.shape)} and ref_logits {tuple(ref_logits.shape)} must be the "
            f"same [B, T, V], mask {tuple(mask.shape)} their [B, T]"
        )
    logp = torch.log_softmax(logits.float(), dim=-1)
    ref_logp = torch.log_softmax(ref_logits.float(), dim=-1)
    # torch's kl_div(input, target) is sum target.exp() * (target - input): KL(pi || pi_ref).
    per_token = F.kl_div(ref_logp, logp, reduction="none", log_target=True).sum(dim=-1)
    per_token = per_token.clamp(min=0.0)  # rounding below 0
    return (per_token * mask.to(per_token.dtype)).sum(dim=1)


def kl_penalized_rewards(
    scores: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    kl_coef: float,
    kind: KLKind = "k1",
) -> Tensor:
    """Per-token rewards of PPO for RLHF (Ziegler et al. 2019, eq. 2; Ouyang et al. 2022).

    r_t = -kl_coef * kl_t on every response token, plus the sequence score on the last one.

    Args:
        scores: [B] reward-model scores of the whole responses.
        logp, ref_logp: [B, T] per-token log-probs under the sampling policy and the reference.
        mask: [B, T] 1 on response tokens; every row needs at least one.
        kl_coef: the KL penalty coefficient (e.g. a KL controller's ``value``).
        kind: the KL estimator, see ``kl_estimate``.

    Returns:
        rewards [B, T], 0 where mask is 0, detached (rewards are data, not part of the graph).
    """
    if mask.shape != logp.shape or scores.shape != logp.shape[:1]:
        raise ValueError(
            f"scores {tuple(scores.shape)} must be [B] and mask {tuple(mask.shape)} [B, T] for "
            f"logp {tuple(logp.shape)}"
        )
    with torch.no_grad():
        valid = mask.bool()
        has_token = valid.any(dim=1)
        if not bool(has_token.all()):
            rows = torch.nonzero(~has_token).flatten().tolist()
            raise ValueError(f"mask has no response token in rows {rows}: no token to score")
        kl = kl_estimate(logp.detach(), ref_logp.detach(), kind)
        rewards = torch.where(valid, -kl_coef * kl, torch.zeros_like(kl))
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(valid)
        last = torch.where(valid, positions, -1).argmax(dim=1)  # last response token per row
        rewards[torch.arange(len(last), device=last.device), last] += scores.to(rewards.dtype)
    return rewards


class KLController(Protocol):
    """A KL coefficient: read ``value``, then report the measured KL after each batch."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None:
        """Adjust ``value`` after ``n_steps`` samples whose mean KL was ``current_kl``."""


class FixedKLController:
    """A constant KL coefficient, with the interface of ``AdaptiveKLController``."""

    def __init__(self, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Do nothing: the coefficient is fixed."""


class AdaptiveKLController:
    """Proportional controller of the KL coefficient toward a target KL (Ziegler et al. 2019).

    e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n_steps / horizon).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if init_kl_coef <= 0:
            raise ValueError(f"init_kl_coef must be > 0, got {init_kl_coef}")
        if target <= 0:
            raise ValueError(f"target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move the coefficient after ``n_steps`` samples whose mean KL was ``current_kl``."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

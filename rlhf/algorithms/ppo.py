"""The clipped PPO losses (Schulman et al. 2017) for the policy and the value function, and the
truncated importance weights that correct samples drawn by another policy (the samplers')."""

from __future__ import annotations

import torch
from torch import Tensor

from rlhf.algorithms.kl import kl_estimate
from rlhf.algorithms.masked import masked_mean


def _check_shapes(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shape mismatch: {listed} must all have the same shape [B, T]")


def truncated_is_weights(
    old_logp: Tensor, behaviour_logp: Tensor, mask: Tensor, cap: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Truncated importance weights of the sampled tokens: w_t = min(pi_old / mu, cap).

    ``mu`` is the behaviour policy, the one that drew the tokens (the samplers' engine, which
    may hold older weights than the trainer: ``rounds.max_staleness``, or differ numerically);
    ``pi_old`` the trainer's policy when the experience was made. w_t multiplies the token's
    PPO loss (docs/algorithms.md, Off-policy samples).

    Shapes: old_logp, behaviour_logp, mask [B, T] -> weights [B, T] (0 off the mask, detached)
    and scalar stats over valid tokens of the untruncated ratio pi_old / mu: ``ratio_mean``,
    ``ratio_max`` and ``capped_fraction`` (share of tokens whose ratio is above ``cap``).
    """
    _check_shapes(old_logp=old_logp, behaviour_logp=behaviour_logp, mask=mask)
    if cap <= 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    valid = mask.bool()
    with torch.no_grad():
        ratio = torch.exp(old_logp - behaviour_logp)
        weights = torch.where(valid, ratio.clamp(max=cap), 0.0)
        stats = {
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": ratio[valid].max() if valid.any() else torch.zeros(()),
            "capped_fraction": masked_mean((ratio > cap).float(), mask),
        }
    return weights, stats


def ppo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate policy loss (Schulman et al. 2017, eq. 7), averaged over valid tokens.

    loss_t = -w_t * min(ratio_t * A_t, clip(ratio_t, 1 - eps, 1 + eps) * A_t),
    ratio_t = pi / pi_old, w_t the truncated importance weight of the token when the samples
    came from another policy (:func:`truncated_is_weights`; None: w_t = 1).

    Shapes: logp (differentiable), old_logp, advantages, mask, is_weights [B, T] -> a scalar
    loss and detached scalar stats: ``clip_fraction`` (share of valid tokens where the clipped
    term is the active one) and ``approx_kl`` (k3 estimate of KL(pi_old || pi) on the sampled
    tokens).
    """
    _check_shapes(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask)
    if is_weights is not None:
        _check_shapes(logp=logp, is_weights=is_weights)
    if clip_eps <= 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    old_logp = old_logp.detach()
    advantages = advantages.detach()
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    if is_weights is not None:
        per_token = is_weights.detach() * per_token
    loss = masked_mean(per_token, mask)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(kl_estimate(old_logp, logp.detach(), "k3"), mask),
            "ratio_mean": masked_mean(ratio.detach(), mask),
        }
    return loss, stats


def ppo_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps: float | None = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss of PPO, averaged over valid tokens.

    loss_t = 0.5 * max((V_t - R_t)^2, (V_old_t + clip(V_t - V_old_t, -eps, eps) - R_t)^2);
    ``clip_eps=None`` gives the plain 0.5 * (V_t - R_t)^2.

    Shapes: values (differentiable), old_values, returns, mask [B, T] -> a scalar loss and
    detached scalar stats: ``clip_fraction`` (share of valid tokens where the clipped error is
    the larger one) and ``values_mean``.
    """
    _check_shapes(values=values, old_values=old_values, returns=returns, mask=mask)
    returns = returns.detach()
    unclipped = (values - returns).square()
    if clip_eps is None:
        loss_t = unclipped
        clip_fraction = torch.zeros((), device=values.device)
    else:
        if clip_eps <= 0:
            raise ValueError(f"clip_eps must be > 0 or None, got {clip_eps}")
        old_values = old_values.detach()
        clipped_values = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
        clipped = (clipped_values - returns).square()
        loss_t = torch.maximum(unclipped, clipped)
        clip_fraction = masked_mean((clipped > unclipped).float().detach(), mask)
    loss = 0.5 * masked_mean(loss_t, mask)
    stats = {"clip_fraction": clip_fraction, "values_mean": masked_mean(values.detach(), mask)}
    return loss, stats

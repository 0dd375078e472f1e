"""The clipped PPO losses (Schulman et al. 2017) for the policy and the value function."""

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


def ppo_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate policy loss (Schulman et al. 2017, eq. 7), averaged over valid tokens.

    loss_t = -min(ratio_t * A_t, clip(ratio_t, 1 - eps, 1 + eps) * A_t), ratio_t = pi / pi_old.

    Shapes: logp (differentiable), old_logp, advantages, mask [B, T] -> a scalar loss and
    detached scalar stats: ``clip_fraction`` (share of valid tokens where the clipped term is
    the active one) and ``approx_kl`` (k3 estimate of KL(pi_old || pi) on the sampled tokens).
    """
    _check_shapes(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask)
    if clip_eps <= 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    old_logp = old_logp.detach()
    advantages = advantages.detach()
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
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

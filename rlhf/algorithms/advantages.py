"""Advantage estimators: GAE with a critic, and the critic-free GRPO, RLOO and REINFORCE++.

All work on per-token rewards [B, T] with a response mask [B, T]; positions where the mask is 0
(prompt, padding, or masked tokens inside a response) are skipped: they get advantage and return
0, and the recursions pass over them to the next valid position. Outputs are detached.

Each is registered under the advantage-estimator registry with the fixed signature
``fn(batch: AdvantageInput, **options) -> (advantages [B, T], returns [B, T])``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlhf.algorithms.masked import masked_whiten
from rlhf.algorithms.registry import register_advantage
from rlhf.algorithms.types import AdvantageInput


def _check_discount(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _float(x: Tensor) -> Tensor:
    """x in at least float32 (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_rewards_mask(rewards: Tensor, mask: Tensor) -> None:
    if rewards.dim() != 2 or mask.shape != rewards.shape:
        raise ValueError(
            f"rewards {tuple(rewards.shape)} and mask {tuple(mask.shape)} must both be [B, T]"
        )


@torch.no_grad()
def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, eq. 16), over valid tokens only.

    delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1},
    returns_t = A_t + V_t, where t+1 is the next valid position and V after the last valid
    token is 0 (the episode ends with the response).

    Shapes: rewards, values, mask [B, T] -> advantages [B, T], returns [B, T] (0 where masked).
    lam = 1 gives the discounted reward-to-go minus V; lam = 0 the one-step TD error.
    """
    _check_rewards_mask(rewards, mask)
    if values.shape != rewards.shape:
        raise ValueError(f"values {tuple(values.shape)} must have the shape of rewards [B, T]")
    _check_discount("gamma", gamma)
    _check_discount("lam", lam)
    valid = mask.bool()
    rewards = _float(rewards)
    values = _float(values).to(rewards.dtype)
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        is_valid = valid[:, t]
        advantages[:, t] = torch.where(is_valid, advantage, 0.0)
        next_value = torch.where(is_valid, values[:, t], next_value)
        next_advantage = torch.where(is_valid, advantage, next_advantage)
    returns = torch.where(valid, advantages + values, 0.0)
    return advantages, returns


@torch.no_grad()
def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Reward-to-go G_t = sum_{t' >= t, valid} gamma^(steps from t to t') r_t'.

    Shapes: rewards, mask [B, T] -> returns [B, T] (0 where masked).
    """
    _check_rewards_mask(rewards, mask)
    _check_discount("gamma", gamma)
    valid = mask.bool()
    rewards = _float(rewards)
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = torch.where(valid[:, t], rewards[:, t] + gamma * running, running)
        returns[:, t] = torch.where(valid[:, t], running, 0.0)
    return returns


def _group_scores(rewards: Tensor, mask: Tensor, group_size: int, name: str) -> Tensor:
    """Sequence scores [B] (summed token rewards) viewed as [B / K, K] groups."""
    _check_rewards_mask(rewards, mask)
    batch = rewards.shape[0]
    if group_size < 2 or batch % group_size != 0:
        raise ValueError(
            f"{name} needs group_size >= 2 samples per prompt that divides the batch size "
            f"{batch} (rows grouped consecutively), got group_size={group_size}"
        )
    scores = torch.where(mask.bool(), _float(rewards), 0.0).sum(dim=1)
    return scores.view(batch // group_size, group_size)


def _broadcast(sequence_advantages: Tensor, mask: Tensor) -> Tensor:
    """[B] -> [B, T], on response tokens only."""
    return torch.where(mask.bool(), sequence_advantages.reshape(-1, 1), 0.0)


@torch.no_grad()
def grpo_advantages(
    rewards: Tensor, mask: Tensor, group_size: int, eps: float = 1e-6, scale_by_std: bool = True
) -> tuple[Tensor, Tensor]:
    """GRPO group-normalised advantages (Shao et al. 2024, DeepSeekMath, sec. 4.1.2).

    With s_i the summed reward of sample i and its group of K samples of the same prompt:
    A_i = (s_i - mean(s_group)) / (std(s_group) + eps), std with Bessel's correction;
    ``scale_by_std=False`` keeps only the mean subtraction (as in Dr. GRPO, Liu et al. 2025).

    Shapes: rewards, mask [B, T], B = num_prompts * group_size -> advantages [B, T] (A_i on
    every response token), returns [B, T] (undiscounted reward-to-go).
    """
    scores = _group_scores(rewards, mask, group_size, "grpo")
    centered = scores - scores.mean(dim=1, keepdim=True)
    if scale_by_std:
        centered = centered / (scores.std(dim=1, keepdim=True) + eps)
    return _broadcast(centered, mask), discounted_returns(rewards, mask)


@torch.no_grad()
def rloo_advantages(rewards: Tensor, mask: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """REINFORCE leave-one-out advantages (Kool et al. 2019; Ahmadian et al. 2024, eq. 5).

    A_i = s_i - mean_{j != i} s_j = K / (K - 1) * (s_i - mean(s_group)).

    Shapes: rewards, mask [B, T], B = num_prompts * group_size -> advantages [B, T] (A_i on
    every response token), returns [B, T] (undiscounted reward-to-go).
    """
    scores = _group_scores(rewards, mask, group_size, "rloo")
    others_mean = (scores.sum(dim=1, keepdim=True) - scores) / (group_size - 1)
    return _broadcast(scores - others_mean, mask), discounted_returns(rewards, mask)


@torch.no_grad()
def reinforce_pp_advantages(
    rewards: Tensor, mask: Tensor, gamma: float = 1.0
) -> tuple[Tensor, Tensor]:
    """REINFORCE++ advantages (Hu 2025): token returns whitened over the whole batch.

    G_t is the discounted reward-to-go of the (usually KL-penalised) token rewards;
    A_t = (G_t - mean(G)) / std(G) with mean and std over all valid tokens of the batch.

    Shapes: rewards, mask [B, T] -> advantages [B, T], returns [B, T] (G, 0 where masked).
    """
    returns = discounted_returns(rewards, mask, gamma)
    return masked_whiten(returns, mask), returns


# --- registrations: the fixed signature fn(batch: AdvantageInput, **options) ---------------------


@register_advantage("gae", needs_critic=True)
def _gae(batch: AdvantageInput, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """GAE over the batch's critic values; see ``gae``."""
    if batch.values is None:
        raise ValueError("advantage estimator 'gae' needs critic values (batch.values is None)")
    return gae(batch.rewards, batch.values, batch.mask, gamma=gamma, lam=lam)


@register_advantage("grpo", needs_critic=False)
def _grpo(
    batch: AdvantageInput, eps: float = 1e-6, scale_by_std: bool = True
) -> tuple[Tensor, Tensor]:
    """GRPO over groups of ``batch.group_size``; see ``grpo_advantages``."""
    return grpo_advantages(batch.rewards, batch.mask, batch.group_size, eps, scale_by_std)


@register_advantage("rloo", needs_critic=False)
def _rloo(batch: AdvantageInput) -> tuple[Tensor, Tensor]:
    """RLOO over groups of ``batch.group_size``; see ``rloo_advantages``."""
    return rloo_advantages(batch.rewards, batch.mask, batch.group_size)


@register_advantage("reinforce_pp", needs_critic=False)
def _reinforce_pp(batch: AdvantageInput, gamma: float = 1.0) -> tuple[Tensor, Tensor]:
    """REINFORCE++ over the whole batch; see ``reinforce_pp_advantages``."""
    return reinforce_pp_advantages(batch.rewards, batch.mask, gamma)

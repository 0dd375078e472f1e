"""Reductions over the valid (mask == 1) positions of a tensor; masked positions never count."""

from __future__ import annotations

import torch
from torch import Tensor


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x * mask`` over ``dim`` (all elements if None); x and mask have the same shape."""
    # where() rather than x * mask, so that inf/nan at masked positions cannot leak.
    values = torch.where(mask.bool(), x * mask, torch.zeros_like(x))
    return values.sum() if dim is None else values.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over the positions where mask is 1, over ``dim`` (all elements if None).

    Shapes: x, mask [...]; returns a scalar (dim None) or x reduced over dim. A slice with no
    valid position has mean 0 (not NaN), so an all-padding micro-batch contributes no loss.
    """
    total = masked_sum(x, mask, dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    count = count.to(total.dtype)
    return torch.where(count > 0, total / count.clamp(min=torch.finfo(total.dtype).tiny), 0.0)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of x over all valid positions (a scalar); Bessel-corrected if ``unbiased``."""
    mean = masked_mean(x, mask)
    sq = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        count = mask.sum().to(sq.dtype)
        sq = sq * count / (count - 1).clamp(min=1)
    return sq


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over the valid positions of the whole tensor; 0 where mask is 0.

    Shapes: x, mask [B, T] (any shape); returns the shape of x. With ``shift_mean=False`` the
    mean is added back (only the scale changes), as some PPO implementations do for advantages.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))

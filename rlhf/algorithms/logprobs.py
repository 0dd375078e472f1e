"""Log-probabilities of response tokens from causal-LM logits, and the entropy of the logits."""

from __future__ import annotations

import torch
from torch import Tensor

_HALF = (torch.float16, torch.bfloat16)


def sequence_logps(logits: Tensor, labels: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Summed and per-token log-probs of the response tokens of each sequence.

    Args:
        logits: [B, T, V] from a forward pass on ``input_ids`` [B, T].
        labels: [B, T], the ``input_ids`` themselves. The token at position t is predicted by
            the logits at position t - 1; the shift happens here.
        loss_mask: [B, T], 1 on response tokens and 0 on prompt and padding, chosen by position
            (never by token id, so a real EOS equal to the pad id is kept). Position 0 has no
            logits predicting it and must be 0.

    Returns:
        logps: [B], sum over response tokens of log pi(y_t | x, y_<t).
        token_logps: [B, T], the per-token log-probs aligned to ``labels`` (0 where masked).

    Half-precision logits are upcast one sequence at a time, so the log-softmax normaliser is
    computed in float32; only one sequence's [T, V] temporary exists at a time in the forward.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape [B, T, V], got {tuple(logits.shape)}")
    if labels.shape != logits.shape[:2] or loss_mask.shape != logits.shape[:2]:
        raise ValueError(
            f"labels {tuple(labels.shape)} and loss_mask {tuple(loss_mask.shape)} must have the "
            f"shape [B, T] = {tuple(logits.shape[:2])} of the logits"
        )
    mask = loss_mask.bool()
    if mask[:, 0].any():
        raise ValueError(
            "loss_mask[:, 0] must be 0: the first token has no logits predicting it (a response "
            "always follows a prompt of at least one token, e.g. BOS)"
        )
    # Token t is predicted by logits[t - 1]; masked labels may hold anything (e.g. -100).
    targets = torch.where(mask[:, 1:], labels[:, 1:], torch.zeros_like(labels[:, 1:]))
    shifted = logits[:, :-1]
    rows = []
    for row_logits, row_targets in zip(shifted, targets, strict=True):
        if row_logits.dtype in _HALF:
            row_logits = row_logits.float()
        picked = row_logits.gather(-1, row_targets.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row_logits, dim=-1))  # log_softmax at the target
    predicted = torch.stack(rows)  # [B, T - 1]
    token_logps = torch.cat([predicted.new_zeros(predicted.shape[0], 1), predicted], dim=1)
    token_logps = torch.where(mask, token_logps, torch.zeros_like(token_logps))
    return token_logps.sum(dim=1), token_logps


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dimension: [..., V] -> [...].

    H = logsumexp(l) - sum_v softmax(l)_v * l_v, computed in float32 for half-precision input.
    """
    if logits.dtype in _HALF:
        logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)

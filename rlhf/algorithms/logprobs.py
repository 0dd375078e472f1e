"""Log-probabilities of response tokens from causal-LM logits, and the entropy of the logits."""

from __future__ import annotations

import torch
from torch import Tensor

_HALF = (torch.float16, torch.bfloat16)
# Logits normalised per chunk: 16M float32 values (64 MiB) at most in one temporary.
_CHUNK_ELEMENTS = 1 << 24


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

    Only the response positions are scored: their logits are gathered into one [n, V] block
    for ``target_logps``, so prompt and padding positions cost nothing.
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
    scored = mask[:, 1:]
    values = target_logps(logits[:, :-1][scored], labels[:, 1:][scored])
    # masked_scatter fills the mask's positions in the same row-major order.
    token_logps = torch.zeros(mask.shape, dtype=torch.float32, device=logits.device)
    token_logps = token_logps.masked_scatter(mask, values)
    # The sum in float64, rounded once to float32: a float32 sum of a long response's
    # log-probs (thousands in magnitude) drifts by several of its ulps.
    return token_logps.sum(dim=1, dtype=torch.float64).float(), token_logps


def target_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[target] of each row: [n, V] and [n] -> [n] float32.

    Rows are normalised in chunks of at most ``_CHUNK_ELEMENTS`` values, so half-precision
    logits are upcast to float32 a chunk at a time.
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"logits [n, V] and targets [n] expected, got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    chunk = max(1, _CHUNK_ELEMENTS // max(logits.shape[-1], 1))
    parts = []
    for rows, row_targets in zip(logits.split(chunk), targets.split(chunk), strict=True):
        rows = rows.float()  # a no-op for float32 logits
        picked = rows.gather(-1, row_targets.unsqueeze(-1)).squeeze(-1)
        parts.append(picked - torch.logsumexp(rows, dim=-1))  # log_softmax at the target
    return torch.cat(parts) if parts else logits.new_zeros(0, dtype=torch.float32)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dimension: [..., V] -> [...].

    H = logsumexp(l) - sum_v softmax(l)_v * l_v, computed in float32 for half-precision input.
    """
    if logits.dtype in _HALF:
        logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)

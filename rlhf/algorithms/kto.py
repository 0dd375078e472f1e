"""KTO: preference optimization from unpaired feedback (single responses labelled good or bad).

Its input is B single responses, each desirable or undesirable, plus a reference point
estimated from mismatched (prompt, response) pairs of the same batch. ``kto_loss`` takes them as
[B] tensors; the registered ``kto`` reads them from a ``RankedLogps`` of unpaired feedback
(column 0 the response, column 1 its mismatched pair, ``labels``); ``unpaired_metrics`` are
its metrics. Offline DPO reads such feedback as ``{prompt, completion, label}`` rows, each with
its mismatched pair (``rlhf.data.records.add_mismatched``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rlhf.algorithms.preference import check_beta, reference_logps
from rlhf.algorithms.registry import register_preference_loss
from rlhf.algorithms.types import RankedLogps


def mismatched_indices(batch_size: int) -> Tensor:
    """For row i of a batch, the row whose response is paired with prompt i to estimate KTO's
    reference point: i - 1 (row 0 takes the last row's), so that no prompt keeps its own
    response when batch_size > 1. The same pairing as TRL's ``KTOTrainer``.

    Shapes: -> [batch_size] long.
    """
    if batch_size < 2:
        raise ValueError(
            f"KTO's reference point needs mismatched pairs: a batch of at least 2 responses, "
            f"got {batch_size}"
        )
    return torch.roll(torch.arange(batch_size), 1)


def reference_point(mismatched_policy_logps: Tensor, mismatched_reference_logps: Tensor) -> Tensor:
    """KTO's reference point z0 = max(0, mean_j [log pi(y'_j|x_j) - log pi_ref(y'_j|x_j)]) over
    M mismatched pairs (x_j, y'_j): an estimate of KL(pi || pi_ref) that takes no gradient.

    Shapes: [M], [M] -> scalar.
    """
    return (mismatched_policy_logps - mismatched_reference_logps).detach().mean().clamp(min=0)


def kto_loss(
    policy_logps: Tensor,
    reference_logps: Tensor,
    desirable: Tensor,
    mismatched_policy_logps: Tensor,
    mismatched_reference_logps: Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> Tensor:
    """Per-response KTO losses (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect
    Theoretic Optimization", eq. 7).

    With r = log pi(y|x) - log pi_ref(y|x) and the reference point
    z0 = max(0, mean_j [log pi(y'_j|x_j) - log pi_ref(y'_j|x_j)]) over mismatched pairs
    (x_j, y'_j), an estimate of KL(pi || pi_ref) that takes no gradient:

        desirable y:    loss = lambda_D * (1 - sigmoid(beta * (r - z0)))
        undesirable y:  loss = lambda_U * (1 - sigmoid(beta * (z0 - r)))

    lambda_D = ``desirable_weight``, lambda_U = ``undesirable_weight`` (the paper keeps
    lambda_D n_D / (lambda_U n_U) in [1, 4/3] when the two kinds are imbalanced).

    Shapes: policy_logps, reference_logps [B] summed response log-probs; desirable [B] bool;
    mismatched_policy_logps, mismatched_reference_logps [M] the same for M mismatched pairs
    (``mismatched_indices``) -> losses [B]. Their mean is TRL's ``KTOTrainer`` loss.
    """
    check_beta(beta)
    for name, weight in (
        ("desirable_weight", desirable_weight),
        ("undesirable_weight", undesirable_weight),
    ):
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"kto: {name} must be a finite number >= 0, got {weight!r}")
    if policy_logps.dim() != 1 or reference_logps.shape != policy_logps.shape:
        raise ValueError(
            f"kto: policy_logps {tuple(policy_logps.shape)} and reference_logps "
            f"{tuple(reference_logps.shape)} must both be [B]"
        )
    if desirable.shape != policy_logps.shape or desirable.dtype != torch.bool:
        raise ValueError(
            f"kto: desirable must be a bool tensor [B] = {tuple(policy_logps.shape)}, got "
            f"{desirable.dtype} {tuple(desirable.shape)}"
        )
    if mismatched_policy_logps.shape != mismatched_reference_logps.shape:
        raise ValueError("kto: the mismatched policy and reference log-probs must have one shape")
    z0 = reference_point(mismatched_policy_logps, mismatched_reference_logps)
    r = policy_logps - reference_logps
    good = desirable_weight * (1.0 - torch.sigmoid(beta * (r - z0)))
    bad = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - r)))
    return torch.where(desirable, good, bad)


def unpaired_metrics(logps: RankedLogps, beta: float) -> dict[str, float]:
    """The metrics of a batch of unpaired feedback (as ``preference_metrics`` for preferences),
    floats averaged over its B rows, with r_hat = beta * (log pi - log pi_ref) of each row's
    completion (log pi alone if the reference is None) and z0 its reference point:

    ``kl``: z0 / 1 (the KL estimate; TRL logs it as ``kl``); ``rewards/desirable_sum``,
    ``rewards/undesirable_sum``: r_hat summed over the desirable (undesirable) rows / B;
    ``share/desirable``, ``share/undesirable``: their fractions of B (a driver divides the two
    after averaging over all rows: ``rewards/desirable`` is the mean r_hat of desirable rows,
    see ``rlhf.driver.preference_training.share_means``); ``rewards/accuracies``: the fraction
    of rows on their label's side of the reference point (r_hat > beta z0 if desirable, < if not);
    ``logps/desirable_sum``, ``logps/undesirable_sum``: policy log-probs, summed like the rewards.

    Shapes: logps.policy, logps.reference [B, 2] (column 1 the mismatched pairs), logps.labels
    [B] -> floats.
    """
    check_beta(beta)
    if logps.labels is None or logps.num_ranked != 2:
        raise ValueError("unpaired_metrics takes unpaired feedback: K == 2 and RankedLogps.labels")
    policy = logps.policy.detach().float()
    reference = torch.zeros_like(policy) if logps.reference is None else logps.reference.float()
    ratio = policy - reference
    z0 = ratio[:, 1].mean().clamp(min=0)
    rewards = beta * ratio[:, 0]
    good = logps.labels.float()
    bad = 1.0 - good
    n = len(good)
    correct = torch.where(logps.labels, ratio[:, 0] > z0, ratio[:, 0] < z0).float()
    return {
        "kl": z0.item(),
        "rewards/desirable_sum": (rewards * good).sum().item() / n,
        "rewards/undesirable_sum": (rewards * bad).sum().item() / n,
        "logps/desirable_sum": (policy[:, 0] * good).sum().item() / n,
        "logps/undesirable_sum": (policy[:, 0] * bad).sum().item() / n,
        "share/desirable": good.mean().item(),
        "share/undesirable": bad.mean().item(),
        "rewards/accuracies": correct.mean().item(),
    }


@register_preference_loss("kto", needs_reference=True, unpaired=True)
def kto(
    logps: RankedLogps,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> Tensor:
    """KTO (see ``kto_loss``) on unpaired feedback: column 0 of ``logps`` holds the B labelled
    responses, column 1 the B mismatched pairs (prompt i with another row's response) whose
    mean log-ratio is the reference point z0 of this (micro) batch; ``logps.labels`` [B] says
    which responses are desirable. TRL: ``KTOTrainer`` (loss_type ``kto``), whose z0 is the mean
    over its per-device batch.

    Shapes: logps.policy, logps.reference [B, 2], logps.labels [B] -> losses [B].
    """
    if logps.labels is None or logps.num_ranked != 2:
        raise ValueError(
            "preference loss 'kto' takes unpaired feedback ({prompt, completion, label} rows): "
            "each labelled response with a mismatched pair (K == 2) and RankedLogps.labels; got "
            f"K={logps.num_ranked} and labels={'None' if logps.labels is None else 'given'}"
        )
    reference = reference_logps(logps, "kto")
    return kto_loss(
        logps.policy[:, 0],
        reference[:, 0],
        logps.labels,
        logps.policy[:, 1],
        reference[:, 1],
        beta,
        desirable_weight,
        undesirable_weight,
    )

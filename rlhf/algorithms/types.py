"""The typed inputs of the two plug points: preference losses and advantage estimators.

Every preference loss takes a `RankedLogps` and every advantage estimator an `AdvantageInput`,
so a trainer calls any registered algorithm the same way (see `registry.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor


def _check_same_shape(name: str, tensor: Tensor, ref_name: str, ref: Tensor) -> None:
    if tensor.shape != ref.shape:
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)} but {ref_name} has shape "
            f"{tuple(ref.shape)}; they must match"
        )


@dataclass(frozen=True)
class RankedLogps:
    """Summed response log-probs of K ranked responses per prompt.

    Column 0 is the most preferred response, column K-1 the least. A preference pair is K == 2.
    Unpaired feedback (KTO, losses registered ``unpaired=True``) has K == 2 too: column 0 is the
    labelled response, column 1 the same prompt with another row's response (a mismatched pair:
    offline DPO's data layer picks it, ``rlhf.data.records.add_mismatched``; within a batch,
    ``kto.mismatched_indices`` does), and ``labels`` says which responses are desirable.
    """

    policy: Tensor  # [B, K] summed response log-probs under the policy (differentiable)
    reference: Tensor | None  # [B, K] same under the reference; None for reference-free losses
    lengths: Tensor  # [B, K] number of response tokens, for length-normalised losses
    labels: Tensor | None = None  # [B] bool, unpaired feedback only: column 0 is desirable

    def __post_init__(self) -> None:
        if self.policy.dim() != 2 or self.policy.shape[1] < 2:
            raise ValueError(
                f"RankedLogps.policy must have shape [B, K] with K >= 2 responses per prompt, "
                f"got {tuple(self.policy.shape)}"
            )
        if self.reference is not None:
            _check_same_shape("RankedLogps.reference", self.reference, "policy", self.policy)
        _check_same_shape("RankedLogps.lengths", self.lengths, "policy", self.policy)
        if self.labels is not None and (
            self.labels.dtype != torch.bool or self.labels.shape != self.policy.shape[:1]
        ):
            raise ValueError(
                f"RankedLogps.labels must be a bool tensor [B] = {tuple(self.policy.shape[:1])}, "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )

    @property
    def num_ranked(self) -> int:
        """K, the number of ranked responses per prompt."""
        return self.policy.shape[1]

    @classmethod
    def from_pair(
        cls,
        policy_chosen: Tensor,
        policy_rejected: Tensor,
        reference_chosen: Tensor | None,
        reference_rejected: Tensor | None,
        chosen_lengths: Tensor,
        rejected_lengths: Tensor,
    ) -> RankedLogps:
        """Stack [B] chosen/rejected tensors into a K == 2 ranking (chosen is column 0)."""
        if (reference_chosen is None) != (reference_rejected is None):
            raise ValueError("reference_chosen and reference_rejected must both be given or None")
        reference = None
        if reference_chosen is not None and reference_rejected is not None:
            reference = _stack_pair(reference_chosen, reference_rejected, "reference")
        return cls(
            policy=_stack_pair(policy_chosen, policy_rejected, "policy"),
            reference=reference,
            lengths=_stack_pair(chosen_lengths, rejected_lengths, "lengths"),
        )


def _stack_pair(chosen: Tensor, rejected: Tensor, what: str) -> Tensor:
    if chosen.dim() != 1 or chosen.shape != rejected.shape:
        raise ValueError(
            f"{what}: chosen and rejected must both have shape [B], got "
            f"{tuple(chosen.shape)} and {tuple(rejected.shape)}"
        )
    return torch.stack((chosen, rejected), dim=1)


@dataclass(frozen=True)
class AdvantageInput:
    """What every advantage estimator receives: per-token rewards of B sampled responses."""

    rewards: Tensor  # [B, T] per-token rewards (0 where mask is 0)
    mask: Tensor  # [B, T] 1 on response tokens, 0 on prompt and padding
    values: Tensor | None  # [B, T] critic values; None for critic-free estimators
    group_size: int = 1  # K samples per prompt; rows i*K .. i*K+K-1 belong to prompt i

    def __post_init__(self) -> None:
        if self.rewards.dim() != 2:
            raise ValueError(
                f"AdvantageInput.rewards must have shape [B, T], got {tuple(self.rewards.shape)}"
            )
        _check_same_shape("AdvantageInput.mask", self.mask, "rewards", self.rewards)
        if self.values is not None:
            _check_same_shape("AdvantageInput.values", self.values, "rewards", self.rewards)
        if self.group_size < 1 or self.rewards.shape[0] % self.group_size != 0:
            raise ValueError(
                f"AdvantageInput.group_size={self.group_size} must be >= 1 and divide the "
                f"batch size {self.rewards.shape[0]} (rows are grouped consecutively per prompt)"
            )


class PreferenceLoss(Protocol):
    """The signature of every registered preference loss: per-example losses [B]."""

    def __call__(self, logps: RankedLogps, beta: float, **options: Any) -> Tensor: ...


class AdvantageEstimator(Protocol):
    """The signature of every registered advantage estimator: (advantages, returns), [B, T]."""

    def __call__(self, batch: AdvantageInput, **options: Any) -> tuple[Tensor, Tensor]: ...

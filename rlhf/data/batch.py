"""The typed batch that moves between the driver and the trainer ranks.

Arrow tables are the storage and transport format; this dataclass is the API. Every field
carries its shape. Rows are grouped by prompt: row ``i * K + k`` is response ``k`` of prompt
``i``, and column 0 (k = 0) is the most preferred response. A pair is K = 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def shard_bounds(num_prompts: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s prompts ``[lo, hi)`` of a step of ``num_prompts``.

    Ranks take ``ceil(num_prompts / world_size)`` prompts each in order, so the first rank's
    shard is the largest and the last ones may be short or empty.
    """
    per_rank = -(-num_prompts // world_size)
    return min(rank * per_rank, num_prompts), min((rank + 1) * per_rank, num_prompts)


@dataclass
class PreferenceBatch:
    """B prompts with K ranked responses each, flattened to N = B * K sequences."""

    input_ids: torch.Tensor  # [N, T] int64 prompt + response tokens, right-padded
    attention_mask: torch.Tensor  # [N, T] int64, 1 on real tokens (prompt and response)
    loss_mask: torch.Tensor  # [N, T] int64, 1 on response tokens (EOS included), by position
    ref_logps: torch.Tensor | None  # [N] float32 reference log-probs summed over response tokens
    num_responses: int  # K

    def __post_init__(self) -> None:
        n, _ = self.input_ids.shape
        if n % self.num_responses:
            raise ValueError(f"{n} sequences is not a multiple of K = {self.num_responses}")
        for name in ("attention_mask", "loss_mask"):
            if getattr(self, name).shape != self.input_ids.shape:
                raise ValueError(
                    f"{name} has shape {tuple(getattr(self, name).shape)}, "
                    f"input_ids {tuple(self.input_ids.shape)}"
                )
        if self.ref_logps is not None and self.ref_logps.shape != (n,):
            raise ValueError(f"ref_logps has shape {tuple(self.ref_logps.shape)}, expected ({n},)")

    @property
    def num_prompts(self) -> int:
        """B."""
        return self.input_ids.shape[0] // self.num_responses

    @property
    def response_lengths(self) -> torch.Tensor:
        """[N] number of response tokens of each sequence."""
        return self.loss_mask.sum(-1)

    def shard(self, rank: int, world_size: int) -> PreferenceBatch:
        """The prompts of one data-parallel rank (whole groups, never a split ranking)."""
        lo, hi = (b * self.num_responses for b in shard_bounds(self.num_prompts, rank, world_size))
        # Cloned: a pickled slice would carry its whole storage (every rank's rows) along.
        ref = None if self.ref_logps is None else self.ref_logps[lo:hi].clone()
        return PreferenceBatch(
            self.input_ids[lo:hi].clone(),
            self.attention_mask[lo:hi].clone(),
            self.loss_mask[lo:hi].clone(),
            ref,
            self.num_responses,
        )


@dataclass
class RolloutBatch:
    """N sampled sequences (prompt + response) and what PPO knows about each response token.

    Every [N, T] float field is aligned to ``input_ids``: the value at position t belongs to
    the token at t (the action taken after seeing tokens < t) and is 0 where ``loss_mask`` is 0.
    Rows of the same prompt are consecutive (row ``i * K + k`` is sample k of prompt i).
    """

    input_ids: torch.Tensor  # [N, T] int64 prompt + response tokens, right-padded
    attention_mask: torch.Tensor  # [N, T] int64, 1 on real tokens
    loss_mask: torch.Tensor  # [N, T] int64, 1 on response tokens, by position
    old_logps: torch.Tensor | None = None  # [N, T] float32 log pi_old(token) at sampling time
    advantages: torch.Tensor | None = None  # [N, T] float32
    returns: torch.Tensor | None = None  # [N, T] float32 targets of the critic
    old_values: torch.Tensor | None = None  # [N, T] float32 critic values at sampling time

    _PER_TOKEN = ("old_logps", "advantages", "returns", "old_values")

    def __post_init__(self) -> None:
        for name in ("attention_mask", "loss_mask", *self._PER_TOKEN):
            value = getattr(self, name)
            if value is not None and value.shape != self.input_ids.shape:
                raise ValueError(
                    f"{name} has shape {tuple(value.shape)}, input_ids {tuple(self.input_ids.shape)}"
                )

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_tokens(self) -> int:
        """Response tokens in the batch (what token-mean losses divide by)."""
        return int(self.loss_mask.sum())

    def select(self, rows: torch.Tensor | slice) -> RolloutBatch:
        """The given rows, copied, with right padding they all share trimmed off."""
        picked = {
            name: None if getattr(self, name) is None else getattr(self, name)[rows]
            for name in ("input_ids", "attention_mask", "loss_mask", *self._PER_TOKEN)
        }
        lengths = picked["attention_mask"].sum(-1)
        width = max(int(lengths.max()), 1) if len(lengths) else 1
        # Cloned: a pickled view would carry its whole storage (every rank's rows) along.
        return RolloutBatch(
            **{k: None if v is None else v[:, :width].clone() for k, v in picked.items()}
        )

    def shard(self, rank: int, world_size: int) -> RolloutBatch:
        """Data-parallel rank ``rank``'s contiguous share of the rows (sizes differ by <= 1)."""
        bounds = torch.arange(len(self)).tensor_split(world_size)[rank]
        return self.select(bounds)

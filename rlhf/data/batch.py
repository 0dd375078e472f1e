"""The typed batch that moves between the driver and the trainer ranks.

Arrow tables are the storage and transport format; this dataclass is the API. Every field
carries its shape. Rows are grouped by prompt: row ``i * K + k`` is response ``k`` of prompt
``i``, and column 0 (k = 0) is the most preferred response. A pair is K = 2.
"""

from __future__ import annotations

import dataclasses
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
    # [B] bool, unpaired feedback (KTO) only: whether prompt i's response 0 is desirable (its
    # response 1 is the mismatched pair, another row's completion); None for preferences
    labels: torch.Tensor | None = None

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
        if self.labels is not None and (
            self.labels.dtype != torch.bool or self.labels.shape != (n // self.num_responses,)
        ):
            raise ValueError(
                f"labels must be bool of shape ({n // self.num_responses},), got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )

    @property
    def num_prompts(self) -> int:
        """B."""
        return self.input_ids.shape[0] // self.num_responses

    @property
    def response_lengths(self) -> torch.Tensor:
        """[N] number of response tokens of each sequence."""
        return self.loss_mask.sum(-1)

    def shared_prompt_rows(self) -> SharedPromptRows:
        """The batch as one row per prompt, its K responses after it (see ``share_prompts``)."""
        group = torch.arange(self.input_ids.shape[0], device=self.input_ids.device)
        group = group // self.num_responses
        return share_prompts(self.input_ids, self.loss_mask, group)

    def shard(self, rank: int, world_size: int) -> PreferenceBatch:
        """The prompts of one data-parallel rank (whole groups, never a split ranking)."""
        lo, hi = (b * self.num_responses for b in shard_bounds(self.num_prompts, rank, world_size))
        # Cloned: a pickled slice would carry its whole storage (every rank's rows) along.
        ref = None if self.ref_logps is None else self.ref_logps[lo:hi].clone()
        k = self.num_responses
        labels = None if self.labels is None else self.labels[lo // k : hi // k].clone()
        return PreferenceBatch(
            self.input_ids[lo:hi].clone(),
            self.attention_mask[lo:hi].clone(),
            self.loss_mask[lo:hi].clone(),
            ref,
            k,
            labels,
        )


@dataclass
class SharedPromptRows:
    """N = sum of K_b responses to B prompts, one row per prompt: ``[x_b, y_b1, ..., y_bK]``.

    A response attends to its prompt and to itself, never to its siblings, and its positions
    continue from the prompt's end: every response token sees exactly what it would see in its
    own ``prompt + response`` sequence, while the prompt runs once for all K.
    """

    input_ids: torch.Tensor  # [B, W] int64, right-padded (pad id 0, never attended to)
    position_ids: torch.Tensor  # [B, W] int64, each response from the prompt's length on
    segment_ids: torch.Tensor  # [B, W] int64, 0 on the prompt, k on response k (1-based), -1 pad
    # One entry per response token, in order of (sequence, position):
    token_sequence: torch.Tensor  # [n] int64, which of the N sequences it belongs to
    token_row: torch.Tensor  # [n] int64, its row b
    token_column: torch.Tensor  # [n] int64, its column in row b
    token_predictor: torch.Tensor  # [n] int64, the column whose logits predict it
    num_sequences: int  # N

    def attention_mask(self, dtype: torch.dtype = torch.bool) -> torch.Tensor:
        """[B, 1, W, W]: whether query i may attend to key j (j <= i, and j is in the prompt or in
        i's own segment). Boolean (True: attend), or additive in a float ``dtype`` (0 where
        allowed, the dtype's minimum elsewhere), as eager attention adds it to the scores.

        Padding queries attend to the prompt and to earlier padding, so no row is all masked.
        """
        seg = self.segment_ids
        width = seg.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool, device=seg.device).tril()
        allowed = causal & ((seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None]))
        if dtype == torch.bool:
            return allowed[:, None]
        mask = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]

    def to(self, device: torch.device | str) -> SharedPromptRows:
        """The same rows on ``device``."""
        return dataclasses.replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device)
                for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)
            },
        )


def share_prompts(
    input_ids: torch.Tensor, loss_mask: torch.Tensor, group: torch.Tensor
) -> SharedPromptRows:
    """Packs N ``prompt + response`` sequences into one row per prompt.

    Args:
        input_ids: [N, T] prompt + response tokens, right-padded.
        loss_mask: [N, T] 1 on response tokens (at least one per sequence), by position.
        group: [N] the prompt (0..B-1) of each sequence; non-decreasing, and the sequences of
            one prompt have the same prompt tokens. The prompt is taken from a group's first.
    """
    num_seq, width = input_ids.shape
    device = input_ids.device
    response = loss_mask.bool()
    lengths = response.sum(1)
    starts = response.int().argmax(1)  # the first response position: the prompt's length
    ends = width - response.flip(1).int().argmax(1)
    if not bool(((lengths > 0) & (starts > 0) & (ends - starts == lengths)).all()):
        raise ValueError(
            "every sequence needs a prompt of at least one token followed by one unbroken "
            "response of at least one token to share its prompt"
        )
    first = torch.ones(num_seq, dtype=torch.bool, device=device)
    first[1:] = group[1:] != group[:-1]
    prompt_len = starts[first]  # [B]
    leader = first.nonzero().squeeze(1)  # [B] each prompt's first sequence
    columns = torch.arange(width, device=device)
    own_prompt = columns < starts[:, None]
    if (
        bool((group[1:] < group[:-1]).any())
        or not torch.equal(starts, prompt_len[group])
        or bool(((input_ids != input_ids[leader[group]]) & own_prompt).any())
    ):
        raise ValueError("the sequences of one prompt must be consecutive and share its tokens")
    # Response of sequence n starts after the prompt and the group's earlier responses.
    before = lengths.cumsum(0) - lengths
    offset = prompt_len[group] + before - before[first][group]
    row_length = prompt_len + torch.zeros_like(prompt_len).index_add_(0, group, lengths)
    rows = len(prompt_len)
    packed_width = int(row_length.max())
    packed = torch.zeros((rows, packed_width), dtype=torch.long, device=device)
    positions = torch.zeros_like(packed)
    segments = torch.full_like(packed, -1)
    in_prompt = own_prompt[leader]  # [B, T]
    packed[:, :width][in_prompt] = input_ids[leader][in_prompt]
    segments[:, :width][in_prompt] = 0
    positions[:, :width] = torch.where(in_prompt, columns, 0)
    seq, pos = response.nonzero(as_tuple=True)  # row-major: grouped by sequence
    row = group[seq]
    column = offset[seq] + pos - starts[seq]
    packed[row, column] = input_ids[seq, pos]
    rank_in_group = torch.arange(num_seq, device=device) - leader[group]
    segments[row, column] = rank_in_group[seq] + 1
    positions[row, column] = pos
    # A response's first token is predicted by the prompt's last position, the rest by the
    # token before them in the row.
    predictor = torch.where(pos == starts[seq], prompt_len[row] - 1, column - 1)
    return SharedPromptRows(
        packed, positions, segments, seq, row, column, predictor, num_sequences=num_seq
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
    # [N, T] float32 truncated importance weights min(pi_old / mu, cap) of the tokens, mu the
    # samplers' policy that drew them (``ppo.is_cap``); None: weight 1
    is_weights: torch.Tensor | None = None

    _PER_TOKEN = ("old_logps", "advantages", "returns", "old_values", "is_weights")

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

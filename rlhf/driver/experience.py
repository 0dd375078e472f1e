"""PPO experience: sampled sequences as a ``RolloutBatch``, with log-probs, values, rewards and
advantages, and the mini-batches the policy and critic groups train on.

Everything here runs in the driver on CPU tensors; the groups only see ``RolloutBatch`` shards.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import ray
import torch
from torch import Tensor

from rlhf.algorithms import (
    AdvantageInput,
    get_advantage,
    kl_penalized_rewards,
    masked_mean,
    masked_var,
    masked_whiten,
    truncated_is_weights,
)
from rlhf.algorithms.kl import kl_estimate
from rlhf.data.batch import RolloutBatch
from rlhf.driver.metrics import merge_rank_metrics
from rlhf.driver.retry import bounded_get, ranks
from rlhf.driver.rollout import ScoredGroup


def rollout_batch(
    groups: list[ScoredGroup], ref_token_logps: list[list[float]], pad_token_id: int
) -> tuple[RolloutBatch, Tensor, Tensor]:
    """The samples as a batch, plus their reference log-probs [N, T] and scores [N]
    (:func:`token_batch`, then :func:`aligned_reference`)."""
    batch, scores = token_batch(groups, pad_token_id)
    return batch, aligned_reference(batch, ref_token_logps), scores


def token_batch(groups: list[ScoredGroup], pad_token_id: int) -> tuple[RolloutBatch, Tensor]:
    """The samples as a batch (prompt and response tokens, right-padded), and scores [N]."""
    completions = [c for g in groups for c in g.completions]
    sequences = [c.prompt_ids + c.token_ids for c in completions]
    width = max(len(s) for s in sequences)
    n = len(sequences)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    loss_mask = torch.zeros((n, width), dtype=torch.long)
    for row, (c, seq) in enumerate(zip(completions, sequences, strict=True)):
        if not c.token_ids:
            raise ValueError(f"sample {row} (prompt {c.prompt!r}) has no response token")
        input_ids[row, : len(seq)] = torch.tensor(seq)
        attention_mask[row, : len(seq)] = 1
        loss_mask[row, len(c.prompt_ids) : len(seq)] = 1
    scores = torch.tensor([s for g in groups for s in g.scores], dtype=torch.float32)
    return RolloutBatch(input_ids, attention_mask, loss_mask), scores


def aligned_reference(batch: RolloutBatch, ref_token_logps: list[list[float]]) -> Tensor:
    """The batch's reference log-probs [N, T], 0 off the response.

    ``ref_token_logps`` holds, per sequence of length L, the L - 1 log-probs of tokens 1..L-1
    (the reference server's contract); they are aligned here to positions 1..L-1.
    """
    lengths = batch.attention_mask.sum(-1).tolist()
    if len(ref_token_logps) != len(lengths):
        raise ValueError(f"{len(ref_token_logps)} reference rows for {len(lengths)} samples")
    ref = torch.zeros(batch.attention_mask.shape, dtype=torch.float32)
    for row, (length, lps) in enumerate(zip(lengths, ref_token_logps, strict=True)):
        ref[row, 1:length] = torch.tensor(lps, dtype=torch.float32)
    return torch.where(batch.loss_mask.bool(), ref, 0.0)


def behaviour_logps(groups: list[ScoredGroup], width: int) -> Tensor:
    """The samplers' log-probs of the sampled response tokens [N, width], aligned like
    ``rollout_batch``'s rows (0 off the response): the behaviour policy mu."""
    completions = [c for g in groups for c in g.completions]
    out = torch.zeros((len(completions), width), dtype=torch.float32)
    for row, c in enumerate(completions):
        if len(c.token_logprobs) != len(c.token_ids):
            raise ValueError(
                f"sample {row} (prompt {c.prompt!r}) has {len(c.token_logprobs)} sampler "
                f"log-probs for {len(c.token_ids)} response tokens"
            )
        start = len(c.prompt_ids)
        out[row, start : start + len(c.token_ids)] = torch.tensor(c.token_logprobs)
    return out


def importance_weights(
    batch: RolloutBatch, behaviour: Tensor, cap: float | None
) -> tuple[RolloutBatch, dict[str, float]]:
    """The batch with its truncated importance weights min(pi_old / mu, cap) per token, and the
    ratio's statistics as ``ppo_is/...`` (docs/algorithms.md); ``cap`` None: no correction."""
    if cap is None:
        return batch, {}
    batch.is_weights, stats = truncated_is_weights(batch.old_logps, behaviour, batch.loss_mask, cap)
    return batch, {f"ppo_is/{k}": float(v) for k, v in stats.items()}


def mismatch_kl(batch: RolloutBatch, behaviour: Tensor) -> float:
    """``rollout/mismatch_kl``: the mean over response tokens of the k3 estimate of
    KL(mu || pi_old), the samplers' log-probs ``behaviour`` [N, T] against the trainer's
    ``batch.old_logps`` of the same tokens (``rlhf.driver.sync_probe``; docs/algorithms.md)."""
    kl = kl_estimate(behaviour.double(), batch.old_logps.double(), "k3")
    return float(masked_mean(kl, batch.loss_mask))


def micro_batches(rows: int, world_size: int, micro_batch_size: int) -> int:
    """How many micro batches every rank runs for ``rows`` rows sharded over the ranks."""
    per_rank = -(-rows // world_size)
    return max(1, -(-per_rank // micro_batch_size))


def sharded_forward(
    group, method: str, batch: RolloutBatch, micro_batch_size: int
) -> tuple[list, Tensor]:
    """Starts ``method`` (e.g. ``token_logps``) on every rank's shard; returns the refs and
    ``order``, the batch row of each row sent, for :func:`gather_rows`.

    The rows go out dealt by length (:func:`by_length`), so that each rank's micro batches pad
    little; a row's result does not depend on its neighbours.
    """
    num_micro = micro_batches(len(batch), len(group), micro_batch_size)
    order = by_length(torch.arange(len(batch)), batch.attention_mask.sum(-1), len(group))
    return group.call_sharded(method, batch.select(order), num_micro), order


def gather_rows(parts: list[Tensor], width: int, order: Tensor | None = None) -> Tensor:
    """The ranks' [n_r, T_r] results stacked back into [N, width] (shards are contiguous);
    with ``order`` (from :func:`sharded_forward`), row i of the stack goes back to row
    ``order[i]``."""
    rows = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])
    if order is None:
        return rows
    out = torch.empty_like(rows)
    out[order] = rows
    return out


def advantages_and_returns(
    batch: RolloutBatch,
    ref_logps: Tensor,
    scores: Tensor,
    kl_coef: float,
    kl_estimator: str,
    estimator: str,
    options: dict,
    group_size: int,
    whiten: bool,
) -> tuple[RolloutBatch, Tensor]:
    """The batch with advantages and returns from the registered estimator; the token rewards.

    Per-token rewards are the score on the last response token minus ``kl_coef`` times the
    per-token KL estimate (docs/algorithms.md, PPO for RLHF).
    """
    mask = batch.loss_mask
    rewards = kl_penalized_rewards(
        scores, batch.old_logps, ref_logps, mask, kl_coef, kind=kl_estimator
    )
    advantage_input = AdvantageInput(rewards, mask, batch.old_values, group_size)
    advantages, returns = get_advantage(estimator)(advantage_input, **options)
    if whiten:
        advantages = masked_whiten(advantages, mask)
    batch.advantages, batch.returns = advantages.float(), returns.float()
    return batch, rewards


def minibatches(num_rows: int, size: int, seed: int) -> list[Tensor]:
    """Shuffled row indices cut into mini-batches of ``size`` (the last may be smaller)."""
    generator = torch.Generator().manual_seed(seed)
    return list(torch.randperm(num_rows, generator=generator).split(size))


def combine(results: list[dict[str, Any]], prefix: str) -> dict[str, float]:
    """The ranks' token sums as token means over all ranks, named ``prefix/key``."""
    merged = merge_rank_metrics(results, per="tokens")
    return {f"{prefix}/{key}": value for key, value in merged.items()}


def train_steps(
    policy,
    critic,
    batch: RolloutBatch,
    steps: list[Tensor],
    micro_batch_sizes: tuple[int, int],
    timeout_s: float | None = None,
) -> Iterator[dict[str, float]]:
    """Optimizer steps of the policy and (if any) the critic, one per mini-batch of ``steps``
    (row indices of ``batch``); yields each step's combined metrics, in order.

    The batch travels once: every rank holds it (``TrainerRank.hold_batch``) and a step carries
    its row indices. Every step is queued at once (a rank runs its calls in order), so a rank
    starts its next step while the driver logs the last, and the critic never waits for the
    policy. Each step's answers are waited for ``timeout_s`` at most (None: no bound), naming a
    rank that dies at once (``rlhf.driver.retry.bounded_get``).
    """
    roles = [("policy trainer", policy, micro_batch_sizes[0])]
    if critic is not None:
        roles.append(("critic", critic, micro_batch_sizes[1]))
    held = ray.put(batch)
    for _, group, _ in roles:
        group.call("hold_batch", HELD_BATCH, held)
    lengths = batch.attention_mask.sum(-1)
    queued = []
    for rows in steps:
        total = int(batch.loss_mask[rows].sum())
        refs, names = [], []
        for role, group, size in roles:
            num_micro = micro_batches(len(rows), len(group), size)
            mine = by_length(rows, lengths, len(group)).tolist()
            refs += group.call("train_held", HELD_BATCH, mine, total, num_micro)
            names += ranks(role, len(group))
        queued.append((refs, names))
    for refs, names in queued:
        answers = bounded_get(refs, names, timeout_s, "train step")
        n = len(policy)
        metrics = combine(answers[:n], "policy")
        if critic is not None:
            metrics |= combine(answers[n:], "critic")
        yield metrics


HELD_BATCH = "rollout"  # the name the ranks hold a round's batch under


def by_length(rows: Tensor, lengths: Tensor, world_size: int) -> Tensor:
    """A mini-batch's rows in the order that gives each rank (a contiguous shard:
    ``RolloutBatch.shard``) rows of every length, dealt in turn from the shortest, and its
    shard sorted shortest first, so that its micro batches (consecutive runs) pad little.

    The same rows reach the same step: only which rank and which micro batch take a row
    changes, and the step's loss is a sum over its tokens divided by the step's total, so the
    gradient is the same up to float rounding. ``lengths`` [N]: every row's real tokens.
    """
    ordered = rows[torch.argsort(lengths[rows], stable=True)]
    return torch.cat([ordered[rank::world_size] for rank in range(world_size)])


def experience_metrics(
    batch: RolloutBatch, ref_logps: Tensor, scores: Tensor, rewards: Tensor
) -> dict[str, float]:
    """What the iteration's experience looked like: KL, advantages, the critic's fit."""
    mask = batch.loss_mask
    kl = (batch.old_logps - ref_logps).sum(-1)  # k1 per sequence
    metrics = {
        "train/reward/mean": float(scores.mean()),
        "train/reward/max": float(scores.max()),
        "train/kl": float(kl.mean()),
        "train/response_length": float(mask.sum(-1).float().mean()),
        "train/token_reward/mean": float(rewards.sum(-1).mean()),
        "advantages/mean": float(masked_mean(batch.advantages, mask)),
        "advantages/std": math.sqrt(max(float(masked_var(batch.advantages, mask)), 0.0)),
        "returns/mean": float(masked_mean(batch.returns, mask)),
    }
    if batch.old_values is not None:
        var_returns = float(masked_var(batch.returns, mask))
        residual = float(masked_var(batch.returns - batch.old_values, mask))
        metrics["critic/explained_variance"] = (
            1.0 - residual / var_returns if var_returns > 0 else float("nan")
        )
        metrics["critic/values/mean"] = float(masked_mean(batch.old_values, mask))
    return metrics


def sequence_sums(groups: list[ScoredGroup], token_logps: list[list[float]]) -> list[list[float]]:
    """Per-token log-probs (tokens 1..L-1) summed over each response, grouped like the samples."""
    out, flat = [], iter(token_logps)
    for g in groups:
        out.append([sum(next(flat)[len(c.prompt_ids) - 1 :]) for c in g.completions])
    return out

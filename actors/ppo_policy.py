"""The PPO policy: a ``TrainerRank`` whose step is ``PPOPolicyStep``.

Every rank holds the round's whole experience (``TrainerRank.hold_batch``, put into the object
store once); each step names its mini-batch's rows (``train_held``), and each rank trains on its
shard of them. The driver tells every rank the mini-batch's total response tokens and its number
of micro batches, so the loss is the token mean over the whole mini-batch and every rank runs
the same number of passes (ZeRO's collectives run inside them) without any metadata collective. Each rank answers with
token sums of its metrics (see ``actors.rank``); the driver divides.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from actors.deepspeed_rank import DeepSpeedModel, Device
from actors.rank import RoleSetup, TrainerRank, start_role
from rlhf.algorithms import entropy_from_logits, ppo_policy_loss, sequence_logps
from rlhf.data.batch import RolloutBatch
from rlhf.models.deepspeed_config import DEFAULT_LOAD, ModelLoad, PPOTrainerConfig
from rlhf.models.hf import load_causal_lm, response_logits

if TYPE_CHECKING:  # annotations only: the rank and its step import without Ray
    from actors.group import ActorGroup, SharedPlacement


def rollout_micro_batches(
    batch: RolloutBatch, total: int, num_micro: int
) -> Iterator[RolloutBatch | None]:
    """A shard of experience cut into ``num_micro`` runs of consecutive rows (None: empty);
    the PPO steps' ``micro_batches`` (the driver fixes ``num_micro`` for every rank)."""
    for rows in torch.arange(len(batch)).tensor_split(num_micro):
        yield batch.select(rows) if len(rows) else None


class PPOPolicyStep:
    """The clipped PPO objective on the policy; the unit is a response token.

    Args:
        model: this rank's DeepSpeed model of the policy (``micro_batch_sequences``).
        clip_eps: the PPO ratio clip.
        entropy_coef: weight of the entropy bonus (0 logs the entropy without training on it).
    """

    def __init__(self, model: DeepSpeedModel, clip_eps: float = 0.2, entropy_coef: float = 0.0):
        self.model = model
        self.clip_eps = clip_eps
        self.entropy_coef = entropy_coef

    micro_batches = staticmethod(rollout_micro_batches)

    def _token_logps(self, micro: RolloutBatch) -> tuple[Tensor, Tensor, Tensor]:
        """[n, T] log-probs of the response tokens (0 off-mask), and the logits and loss mask
        from the position before the micro batch's earliest response token on
        (``response_logits``: the LM head skips the prompt positions all rows share)."""
        device = self.model.device
        ids, mask = micro.input_ids.to(device), micro.loss_mask.to(device)
        logits, skip = response_logits(
            self.model.engine, ids, micro.attention_mask.to(device), mask
        )
        _, token_logps = sequence_logps(logits, ids[:, skip:], mask[:, skip:])
        return torch.nn.functional.pad(token_logps, (skip, 0)), logits, mask[:, skip:]

    def score(self, micro: RolloutBatch) -> Tensor:
        """[n, T] log-probs of the micro batch's tokens under the current policy (0 off-mask)."""
        return self._token_logps(micro)[0]

    def loss(self, micro: RolloutBatch) -> tuple[Tensor, dict[str, float]]:
        """The micro batch's token-mean PPO loss (minus the entropy bonus) times its tokens;
        token sums of policy_loss, clip_fraction, approx_kl and entropy."""
        device = self.model.device
        mask = micro.loss_mask.to(device)
        logp, logits, logits_mask = self._token_logps(micro)
        is_weights = None if micro.is_weights is None else micro.is_weights.to(device)
        loss, stats = ppo_policy_loss(
            logp,
            micro.old_logps.to(device),
            micro.advantages.to(device),
            mask,
            self.clip_eps,
            is_weights,
        )
        # Logged always; part of the graph only when the bonus trains on it.
        with torch.set_grad_enabled(torch.is_grad_enabled() and bool(self.entropy_coef)):
            entropy = _response_entropy(logits, logits_mask)
        if self.entropy_coef:
            loss = loss - self.entropy_coef * entropy
        tokens = int(mask.sum())
        sums = {
            "policy_loss": float(loss.detach()) * tokens,
            "clip_fraction": float(stats["clip_fraction"]) * tokens,
            "approx_kl": float(stats["approx_kl"]) * tokens,
            "entropy": float(entropy.detach()) * tokens,
        }
        return loss * tokens, sums

    def counts(self, batch: RolloutBatch) -> dict[str, float]:
        """The shard's response tokens (the unit)."""
        return {"tokens": float(batch.num_tokens)}


def _response_entropy(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean over response tokens of the entropy of the logits predicting each (those at t - 1
    for the token at t); only the response positions' logits are taken. ``logits`` [n, T', V]
    and ``mask`` [n, T'] start at the same position."""
    valid = mask[:, 1:].bool()
    return entropy_from_logits(logits[:, :-1][valid]).sum() / valid.sum().clamp(min=1)


class PPOPolicy(TrainerRank):
    """``TrainerRank`` by the name Ray lists the PPO policy's ranks under, with
    ``token_logps`` (the driver's name for ``score``: the policy's log-probs of sampled
    tokens). ``start_ppo_policy`` gives it a ``PPOPolicyStep``."""

    token_logps = TrainerRank.score


def start_ppo_policy(
    model_path: str,
    config: PPOTrainerConfig,
    clip_eps: float,
    entropy_coef: float,
    device: Device = "cpu",
    strategy: str | None = None,
    shared: SharedPlacement | None = None,
    load: ModelLoad = DEFAULT_LOAD,
) -> ActorGroup:
    """Starts the PPO policy's ranks (see ``actors.rank.start_role``)."""
    step = functools.partial(PPOPolicyStep, clip_eps=clip_eps, entropy_coef=entropy_coef)
    setup = RoleSetup(model_path, config, load_causal_lm, step, device, load)
    return start_role(PPOPolicy, setup, strategy, shared)

"""The PPO critic: a ``TrainerRank`` whose step is ``ValueStep``, on a value model.

The value model is the policy's architecture with a one-output head on every position
(``rlhf.models.hf.load_value_model``). Sharding, micro batches and metric sums work as in
``actors.ppo_policy``: the driver passes the mini-batch's total tokens and micro-batch count.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from torch import Tensor

from actors.deepspeed_rank import DeepSpeedModel, Device
from actors.ppo_policy import rollout_micro_batches
from actors.rank import RoleSetup, TrainerRank, start_role
from rlhf.algorithms import ppo_value_loss
from rlhf.data.batch import RolloutBatch
from rlhf.models.deepspeed_config import DEFAULT_LOAD, ModelLoad, PPOTrainerConfig
from rlhf.models.hf import load_value_model, token_values

if TYPE_CHECKING:  # annotations only: the rank and its step import without Ray
    from actors.group import ActorGroup, SharedPlacement


class ValueStep:
    """Clipped value regression toward the returns; the unit is a response token.

    Args:
        model: this rank's DeepSpeed value model (``micro_batch_sequences``).
        value_clip_eps: PPO's value clip around the old values (None: plain squared error).
    """

    def __init__(self, model: DeepSpeedModel, value_clip_eps: float | None = 0.2) -> None:
        self.model = model
        self.value_clip_eps = value_clip_eps

    micro_batches = staticmethod(rollout_micro_batches)

    def score(self, micro: RolloutBatch) -> Tensor:
        """[n, T] values of the micro batch's response tokens (0 off-mask)."""
        device = self.model.device
        return token_values(
            self.model.engine,
            micro.input_ids.to(device),
            micro.attention_mask.to(device),
            micro.loss_mask.to(device),
        )

    def loss(self, micro: RolloutBatch) -> tuple[Tensor, dict[str, float]]:
        """The micro batch's token-mean value loss times its tokens; token sums of value_loss,
        value_clip_fraction and values."""
        mask = micro.loss_mask.to(self.model.device)
        loss, stats = ppo_value_loss(
            self.score(micro),
            micro.old_values.to(mask.device),
            micro.returns.to(mask.device),
            mask,
            self.value_clip_eps,
        )
        tokens = int(mask.sum())
        sums = {
            "value_loss": float(loss.detach()) * tokens,
            "value_clip_fraction": float(stats["clip_fraction"]) * tokens,
            "values": float(stats["values_mean"]) * tokens,
        }
        return loss * tokens, sums

    def counts(self, batch: RolloutBatch) -> dict[str, float]:
        """The shard's response tokens (the unit)."""
        return {"tokens": float(batch.num_tokens)}


class Critic(TrainerRank):
    """``TrainerRank`` by the name Ray lists the critic's ranks under, with ``values`` (the
    driver's name for ``score``: the critic's values of response tokens). ``start_critic``
    gives it a ``ValueStep``."""

    values = TrainerRank.score


def start_critic(
    model_path: str,
    config: PPOTrainerConfig,
    value_clip_eps: float | None,
    device: Device = "cpu",
    strategy: str | None = None,
    shared: SharedPlacement | None = None,
    load: ModelLoad = DEFAULT_LOAD,
) -> ActorGroup:
    """Starts the critic's ranks (see ``actors.rank.start_role``)."""
    step = functools.partial(ValueStep, value_clip_eps=value_clip_eps)
    setup = RoleSetup(model_path, config, load_value_model, step, device, load)
    return start_role(Critic, setup, strategy, shared)

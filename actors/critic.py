"""PPO critic: one data-parallel rank that owns a value model's DeepSpeed engine.

The value model is the policy's architecture with a one-output head on every position
(``rlhf.models.hf.load_value_model``). Sharding, micro batches and metric sums work as in
``actors.ppo_policy``: the driver passes the mini-batch's total tokens and micro-batch count.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from actors.deepspeed_rank import DeepSpeedModel, Device, empty_pass, node_id, start_ranks
from actors.group import ActorGroup, SharedPlacement
from rlhf.algorithms import ppo_value_loss
from rlhf.data.batch import RolloutBatch
from rlhf.models.deepspeed_config import TrainerConfig
from rlhf.models.hf import load_value_model, token_values


class Critic:
    """Values of response tokens, and clipped value-regression steps toward the returns.

    Args:
        rank, world_size, master_addr, master_port: from the ``ActorGroup``.
        model_path: where the value model's body comes from (the SFT policy, or a reward model).
        config: the critic's trainer settings; ``micro_batch_size`` counts sequences.
        value_clip_eps: PPO's value clip around the old values (None: plain squared error).
        device: ``"cpu"`` or ``"cuda"``.
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        model_path: str,
        config: TrainerConfig,
        value_clip_eps: float | None = 0.2,
        device: Device = "cpu",
    ) -> None:
        self.model = DeepSpeedModel(
            rank,
            world_size,
            master_addr,
            master_port,
            model_path,
            config,
            load_value_model,
            device,
        )
        self.engine = self.model.engine
        self.world_size = world_size
        self.value_clip_eps = value_clip_eps

    def _values(self, micro: RolloutBatch) -> Tensor:
        device = self.model.device
        return token_values(
            self.engine,
            micro.input_ids.to(device),
            micro.attention_mask.to(device),
            micro.loss_mask.to(device),
        )

    @torch.no_grad()
    def values(self, batch: RolloutBatch, num_micro: int) -> Tensor:
        """[n, T] values of this shard's response tokens (0 off-mask)."""
        self.engine.eval()
        out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        for rows in torch.arange(len(batch)).tensor_split(num_micro):
            if len(rows) == 0:
                empty_pass(self.engine)
                continue
            micro = batch.select(rows)
            out[rows, : micro.input_ids.shape[1]] = self._values(micro).cpu()
        self.engine.train()
        return out

    def train_step(self, batch: RolloutBatch, total_tokens: int, num_micro: int) -> dict:
        """One optimizer step of the clipped value loss; token-weighted sums like the policy's."""
        start = time.perf_counter()
        lr = self.model.lr()
        sums = {"value_loss": 0.0, "value_clip_fraction": 0.0, "values": 0.0}
        for rows in torch.arange(len(batch)).tensor_split(num_micro):
            if len(rows) == 0:
                self.engine.backward(empty_pass(self.engine), scale_wrt_gas=False)
                continue
            micro = batch.select(rows)
            device = self.model.device
            mask = micro.loss_mask.to(device)
            loss, stats = ppo_value_loss(
                self._values(micro),
                micro.old_values.to(device),
                micro.returns.to(device),
                mask,
                self.value_clip_eps,
            )
            tokens = int(mask.sum())
            self.engine.backward(
                loss * tokens / max(total_tokens, 1) * self.world_size, scale_wrt_gas=False
            )
            sums["value_loss"] += float(loss.detach()) * tokens
            sums["value_clip_fraction"] += float(stats["clip_fraction"]) * tokens
            sums["values"] += float(stats["values_mean"]) * tokens
        self.engine.step()
        return {
            **sums,
            "tokens": float(batch.num_tokens),
            "grad_norm": self.model.grad_norm(),
            "lr": lr,
            "seconds": time.perf_counter() - start,
        }

    def save_checkpoint(self, directory: str, tag: str, client_state: dict[str, Any]) -> None:
        """Saves weights, optimizer and lr-scheduler state (DeepSpeed format); all ranks."""
        self.model.save_checkpoint(directory, tag, client_state)

    def load_checkpoint(self, directory: str, tag: str) -> dict[str, Any]:
        """Restores a ``save_checkpoint``; returns its ``client_state``. All ranks."""
        return self.model.load_checkpoint(directory, tag)

    def node_id(self) -> str:
        """The Ray node this rank runs on."""
        return node_id()


def start_critic(
    model_path: str,
    config: TrainerConfig,
    value_clip_eps: float | None,
    device: Device = "cpu",
    strategy: str | None = None,
    shared: SharedPlacement | None = None,
) -> ActorGroup:
    """Starts ``config.num_ranks`` critic ranks in one placement group.

    ``strategy`` overrides the config's ``placement_strategy``; ``shared``: a placement group
    shared with colocated roles (``ray.colocate``), rank i in its bundle i.
    """
    return start_ranks(
        Critic, config, (model_path, config, value_clip_eps, device), device, strategy, shared
    )

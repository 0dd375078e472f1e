"""PPO policy: one data-parallel rank that owns the policy's DeepSpeed engine for PPO.

The driver shards each mini-batch of experience by rows (``group.call_sharded``) and tells
every rank the mini-batch's total response tokens and its number of micro batches, so the loss
is the token mean over the whole mini-batch and every rank runs the same number of passes
(ZeRO's collectives run inside them) without any metadata collective. Metrics come back as
per-rank token-weighted sums; ``rlhf.driver.ppo`` adds them up.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from actors.deepspeed_rank import DeepSpeedModel, Device, empty_pass, node_id, start_ranks
from actors.group import ActorGroup, SharedPlacement
from rlhf.algorithms import entropy_from_logits, ppo_policy_loss, sequence_logps
from rlhf.data.batch import RolloutBatch
from rlhf.models.deepspeed_config import TrainerConfig
from rlhf.models.hf import load_causal_lm, positions
from rlhf.models.weight_broadcast import Manifest


class PPOPolicy:
    """The policy under PPO: log-probs of sampled tokens and clipped policy-gradient steps.

    Args:
        rank, world_size, master_addr, master_port: from the ``ActorGroup``.
        model_path: the Hugging Face model to start from (the SFT policy).
        config: the trainer settings; ``micro_batch_size`` counts sequences here.
        clip_eps: the PPO ratio clip.
        entropy_coef: weight of the entropy bonus (0 logs the entropy without training on it).
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
        clip_eps: float = 0.2,
        entropy_coef: float = 0.0,
        device: Device = "cpu",
    ) -> None:
        self.model = DeepSpeedModel(
            rank,
            world_size,
            master_addr,
            master_port,
            model_path,
            config,
            load_causal_lm,
            device,
        )
        self.engine = self.model.engine
        self.world_size = world_size
        self.clip_eps = clip_eps
        self.entropy_coef = entropy_coef

    def _logits(self, batch: RolloutBatch) -> Tensor:
        ids = batch.input_ids.to(self.model.device)
        mask = batch.attention_mask.to(self.model.device)
        return self.engine(
            input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False
        ).logits

    @torch.no_grad()
    def token_logps(self, batch: RolloutBatch, num_micro: int) -> Tensor:
        """[n, T] log-probs of this shard's tokens under the current policy (0 off-mask)."""
        self.engine.eval()
        out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        for rows in torch.arange(len(batch)).tensor_split(num_micro):
            if len(rows) == 0:
                empty_pass(self.engine)
                continue
            micro = batch.select(rows)
            logits = self._logits(micro)
            _, token_logps = sequence_logps(
                logits, micro.input_ids.to(logits.device), micro.loss_mask.to(logits.device)
            )
            out[rows, : micro.input_ids.shape[1]] = token_logps.float().cpu()
        self.engine.train()
        return out

    def train_step(self, batch: RolloutBatch, total_tokens: int, num_micro: int) -> dict:
        """One optimizer step of the clipped PPO objective on this rank's shard.

        Each micro batch's token-mean loss is weighted by its share of the ``total_tokens`` of
        the whole mini-batch (all ranks); DeepSpeed averages gradients over the ranks, hence the
        factor ``world_size``. Returns token-weighted sums (policy_loss, clip_fraction,
        approx_kl, entropy, ratio_mean) with their ``tokens``, and the step's grad_norm and lr.
        """
        start = time.perf_counter()
        lr = self.model.lr()
        sums = dict.fromkeys(("policy_loss", "clip_fraction", "approx_kl", "entropy"), 0.0)
        for rows in torch.arange(len(batch)).tensor_split(num_micro):
            if len(rows) == 0:
                self.engine.backward(empty_pass(self.engine), scale_wrt_gas=False)
                continue
            micro = batch.select(rows)
            device = self.model.device
            mask = micro.loss_mask.to(device)
            logits = self._logits(micro)
            _, logp = sequence_logps(logits, micro.input_ids.to(device), mask)
            loss, stats = ppo_policy_loss(
                logp,
                micro.old_logps.to(device),
                micro.advantages.to(device),
                mask,
                self.clip_eps,
            )
            # Logged always; part of the graph only when the bonus trains on it.
            with torch.set_grad_enabled(bool(self.entropy_coef)):
                entropy = _masked_token_mean(entropy_from_logits(logits[:, :-1]), mask)
            if self.entropy_coef:
                loss = loss - self.entropy_coef * entropy
            tokens = int(mask.sum())
            weight = tokens / max(total_tokens, 1) * self.world_size
            self.engine.backward(loss * weight, scale_wrt_gas=False)
            sums["policy_loss"] += float(loss.detach()) * tokens
            sums["clip_fraction"] += float(stats["clip_fraction"]) * tokens
            sums["approx_kl"] += float(stats["approx_kl"]) * tokens
            sums["entropy"] += float(entropy.detach()) * tokens
        self.engine.step()
        return {
            **sums,
            "tokens": float(batch.num_tokens),
            "grad_norm": self.model.grad_norm(),
            "lr": lr,
            "seconds": time.perf_counter() - start,
        }

    # --- weights out and checkpoints (see DeepSpeedModel) ------------------------------------

    def state_dict_for_sync(self) -> dict[str, Tensor] | None:
        """Full weights with Hugging Face names from rank 0 (None from other ranks)."""
        return self.model.full_state_dict()

    def open_weight_broadcast(self, backend: str) -> tuple[tuple[str, int], Manifest] | None:
        """Rank 0 hosts the weight broadcast's rendezvous (see DeepSpeedModel); all ranks."""
        return self.model.open_weight_broadcast(backend)

    def join_weight_group(self, group_id: str, world: int) -> None:
        """Rank 0 forms the weight broadcast group as its source."""
        self.model.join_weight_group(group_id, world)

    def broadcast_weights(self) -> int:
        """Rank 0 broadcasts the full weights to the samplers; all ranks (ZeRO-3 gathers)."""
        return self.model.broadcast_weights()

    def save_pretrained(self, path: str) -> None:
        """Writes the policy as a Hugging Face model directory; every rank must be called."""
        self.model.save_pretrained(path)

    def save_checkpoint(self, directory: str, tag: str, client_state: dict[str, Any]) -> None:
        """Saves weights, optimizer and lr-scheduler state (DeepSpeed format); all ranks."""
        self.model.save_checkpoint(directory, tag, client_state)

    def load_checkpoint(self, directory: str, tag: str) -> dict[str, Any]:
        """Restores a ``save_checkpoint``; returns its ``client_state``. All ranks."""
        return self.model.load_checkpoint(directory, tag)

    def node_id(self) -> str:
        """The Ray node this rank runs on."""
        return node_id()


def _masked_token_mean(per_position: Tensor, mask: Tensor) -> Tensor:
    """Mean over response tokens of a [N, T - 1] quantity of the logits predicting token t."""
    valid = mask[:, 1:].bool()
    total = torch.where(valid, per_position, torch.zeros_like(per_position)).sum()
    return total / valid.sum().clamp(min=1)


def start_ppo_policy(
    model_path: str,
    config: TrainerConfig,
    clip_eps: float,
    entropy_coef: float,
    device: Device = "cpu",
    strategy: str | None = None,
    shared: SharedPlacement | None = None,
) -> ActorGroup:
    """Starts ``config.num_ranks`` PPO policy ranks in one placement group.

    ``strategy`` overrides the config's ``placement_strategy``; ``shared``: a placement group
    shared with colocated roles (``ray.colocate``), rank i in its bundle i.
    """
    return start_ranks(
        PPOPolicy,
        config,
        (model_path, config, clip_eps, entropy_coef, device),
        device,
        strategy,
        shared,
    )

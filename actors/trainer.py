"""Policy trainer: one data-parallel rank that owns one DeepSpeed engine around the policy.

The driver starts ``num_ranks`` of these in an ``ActorGroup`` (see ``start_policy_trainers``),
shards each batch by prompt (``group.call_sharded("train_step", batch)``) and reads the metrics
from any rank: they are reduced across ranks inside ``train_step``, so every rank returns the
global answer. DeepSpeed owns the optimizer, the lr schedule, clipping, ZeRO and offload.

A train step is one optimizer step: the rank's shard is cut into micro batches of at most
``micro_batch_size`` prompts, each runs one forward pass over all its K responses per prompt
and one backward pass, then ``engine.step()``. The loss is the mean over all prompts of the
step (all ranks), whatever the shard sizes.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from actors.deepspeed_rank import DeepSpeedModel, Device, node_id, start_ranks
from actors.group import ActorGroup, SharedPlacement
from rlhf.algorithms import RankedLogps, get_preference_loss, preference_metrics
from rlhf.data.batch import PreferenceBatch
from rlhf.models.deepspeed_config import TrainerConfig
from rlhf.models.hf import batch_logps, load_causal_lm
from rlhf.models.weight_broadcast import Manifest

_METRIC_KEYS = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)


class PolicyTrainer:
    """One rank of the policy trainer: a DeepSpeed engine and a preference loss by name.

    Args:
        rank, world_size: this rank and the number of trainer ranks.
        master_addr, master_port: where rank 0's process group listens (the group finds them).
        model_path: a Hugging Face model directory (weights, config, tokenizer).
        config: the trainer settings (ZeRO stage, optimizer, schedule, batch sizes).
        loss: a registered preference loss name (``rlhf.algorithms.get_preference_loss``).
        beta: the KL strength of the loss; ``loss_options`` its keyword options.
        device: ``"cpu"`` (gloo) or ``"cuda"`` (nccl; the actor sees its one GPU as cuda:0).
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        model_path: str,
        config: TrainerConfig,
        loss: str,
        beta: float,
        loss_options: dict[str, Any] | None = None,
        device: Device = "cpu",
    ) -> None:
        self.loss_fn = get_preference_loss(loss)  # unknown names fail here, not mid-run
        self.beta = beta
        self.loss_options = dict(loss_options or {})
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
        self.rank, self.world_size, self.config = rank, world_size, config
        self.engine, self.device = self.model.engine, self.model.device

    # --- training ---------------------------------------------------------------------------

    def train_step(self, batch: PreferenceBatch) -> dict[str, float]:
        """One optimizer step on this rank's shard; returns metrics averaged over all ranks.

        Keys: loss, rewards/{chosen,rejected,margins,accuracies}, logps/{chosen,rejected},
        grad_norm (DeepSpeed's global norm before clipping; NaN at zero_stage 0, where DeepSpeed
        does not report it), lr (used by this step), prompts and tokens (all ranks),
        tokens_per_s (over the slowest rank's time).
        """
        start = time.perf_counter()
        self.engine.train()
        lr = self.engine.get_lr()[0]
        sizes, chunks = self._plan(batch)
        # Each prompt weighs 1/total in the step; DeepSpeed averages gradients over ranks.
        weight = self.world_size / max(int(sizes.sum()), 1)
        ranked = []
        for chunk in chunks:
            sub, logps = self._forward(batch, chunk)
            if sub is None:  # no prompts left on this rank: keep the collectives in step
                self.engine.backward(logps.sum() * 0.0, scale_wrt_gas=False)
                continue
            losses = self.loss_fn(logps, self.beta, **self.loss_options)
            self.engine.backward(losses.sum() * weight, scale_wrt_gas=False)
            ranked.append(
                (dataclasses.replace(logps, policy=logps.policy.detach()), losses.detach())
            )
        self.engine.step()
        metrics = self._reduce_metrics(batch, ranked, start)
        metrics["grad_norm"] = self.model.grad_norm()
        metrics["lr"] = float(lr)
        return metrics

    @torch.no_grad()
    def eval_step(self, batch: PreferenceBatch) -> dict[str, float]:
        """The train step's metrics without a gradient or an update."""
        start = time.perf_counter()
        self.engine.eval()
        _, chunks = self._plan(batch)
        ranked = []
        for chunk in chunks:
            sub, logps = self._forward(batch, chunk)
            if sub is not None:
                ranked.append((logps, self.loss_fn(logps, self.beta, **self.loss_options)))
        self.engine.train()
        return self._reduce_metrics(batch, ranked, start)

    def _plan(self, batch: PreferenceBatch) -> tuple[Tensor, list[Tensor]]:
        """Every rank's prompt count, and this rank's micro batches (prompt indices).

        All ranks must run the same number of forward/backward passes (ZeRO's collectives run
        inside them), so the count is agreed across ranks; a rank with fewer prompts gets
        smaller (possibly empty) micro batches.
        """
        sizes = torch.zeros(self.world_size, dtype=torch.long, device=self.device)
        sizes[self.rank] = batch.num_prompts
        dist.all_reduce(sizes)
        micro = self.config.micro_batch_size
        num_micro = max(1, int(-(-sizes.max() // micro)))
        return sizes.cpu(), list(torch.arange(batch.num_prompts).tensor_split(num_micro))

    def _forward(
        self, batch: PreferenceBatch, prompts: Tensor
    ) -> tuple[PreferenceBatch | None, RankedLogps | Tensor]:
        """One forward pass over the K responses of the given prompts.

        Returns the sub-batch and its ranked log-probs, or (None, dummy log-probs) for an
        empty micro batch (a two-token pass that keeps the ranks' collectives aligned).
        """
        k = batch.num_responses
        if len(prompts) == 0:
            ids = torch.zeros((1, 2), dtype=torch.long, device=self.device)
            mask = torch.tensor([[0, 1]], device=self.device)
            logps, _ = batch_logps(self.engine, ids, torch.ones_like(ids), mask)
            return None, logps
        rows = (prompts[:, None] * k + torch.arange(k)).flatten()
        on = {
            name: getattr(batch, name)[rows].to(self.device)
            for name in ("input_ids", "attention_mask", "loss_mask")
        }
        # Trim right padding shared by the whole micro batch.
        width = int(on["attention_mask"].sum(-1).max())
        on = {name: value[:, :width] for name, value in on.items()}
        logps, _ = batch_logps(self.engine, on["input_ids"], on["attention_mask"], on["loss_mask"])
        ref = None if batch.ref_logps is None else batch.ref_logps[rows].to(self.device)
        sub = PreferenceBatch(**on, ref_logps=ref, num_responses=k)
        ranked = RankedLogps(
            policy=logps.view(-1, k),
            reference=None if ref is None else ref.view(-1, k).to(logps.dtype),
            lengths=sub.response_lengths.view(-1, k),
        )
        return sub, ranked

    def _reduce_metrics(
        self,
        batch: PreferenceBatch,
        ranked: list[tuple[RankedLogps, Tensor]],
        start: float,
    ) -> dict[str, float]:
        """Prompt-weighted means over all ranks (rank-local values would depend on sharding)."""
        local = torch.zeros(len(_METRIC_KEYS) + 2, dtype=torch.float64)
        if ranked:
            logps = RankedLogps(
                policy=torch.cat([r.policy for r, _ in ranked]),
                reference=None
                if ranked[0][0].reference is None
                else torch.cat([r.reference for r, _ in ranked]),
                lengths=torch.cat([r.lengths for r, _ in ranked]),
            )
            values = preference_metrics(logps, self.beta)
            values["loss"] = torch.cat([loss for _, loss in ranked]).float().mean().item()
            local[: len(_METRIC_KEYS)] = torch.tensor([values[k] for k in _METRIC_KEYS])
            local[: len(_METRIC_KEYS)] *= batch.num_prompts
        local[-2] = batch.num_prompts
        local[-1] = float(batch.attention_mask.sum())
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        total, elapsed = local.to(self.device), elapsed.to(self.device)
        dist.all_reduce(total)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
        total = total.cpu()
        prompts, tokens = total[-2].item(), total[-1].item()
        metrics = {k: (total[i] / max(prompts, 1)).item() for i, k in enumerate(_METRIC_KEYS)}
        metrics.update(prompts=prompts, tokens=tokens, tokens_per_s=tokens / elapsed.item())
        return metrics

    # --- weights out and checkpoints (see DeepSpeedModel) ------------------------------------

    def state_dict_for_sync(self) -> dict[str, Tensor] | None:
        """Full weights with Hugging Face names from rank 0 (None from other ranks).

        Every rank must be called (ZeRO-3 gathers). Tied weights appear once.
        """
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

    def weights_digest(self) -> str:
        """SHA-256 of this rank's view of the full weights (equal on all ranks when in sync)."""
        return self.model.weights_digest()

    def save_checkpoint(self, directory: str, tag: str, client_state: dict[str, Any]) -> None:
        """Saves weights, optimizer and lr-scheduler state (DeepSpeed format); all ranks."""
        self.model.save_checkpoint(directory, tag, client_state)

    def load_checkpoint(self, directory: str, tag: str) -> dict[str, Any]:
        """Restores a ``save_checkpoint``; returns its ``client_state``. All ranks."""
        return self.model.load_checkpoint(directory, tag)

    def ping(self) -> bool:
        """True once the rank is up (its constructor has finished)."""
        return True

    def node_id(self) -> str:
        """The Ray node this rank runs on."""
        return node_id()


def start_policy_trainers(
    model_path: str,
    config: TrainerConfig,
    loss: str,
    beta: float,
    loss_options: dict[str, Any] | None = None,
    device: Device = "cpu",
    strategy: str | None = None,
    shared: SharedPlacement | None = None,
) -> ActorGroup:
    """Starts ``config.num_ranks`` policy trainer ranks in one placement group.

    ``strategy`` overrides the config's ``placement_strategy``; ``shared``: a placement group
    shared with colocated roles (``ray.colocate``), rank i in its bundle i.
    """
    return start_ranks(
        PolicyTrainer,
        config,
        (model_path, config, loss, beta, loss_options, device),
        device,
        strategy,
        shared,
    )

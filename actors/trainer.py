"""Policy trainer: one data-parallel rank that owns one DeepSpeed engine around the policy.

The driver starts ``num_ranks`` of these in an ``ActorGroup`` (see ``start_policy_trainers``),
shards each batch by prompt (``group.call_sharded("train_step", batch, batch.num_prompts)``)
and merges the ranks' answers with ``merge_rank_metrics``. DeepSpeed owns the optimizer, the lr
schedule, clipping, ZeRO and offload.

A train step is one optimizer step: the rank's shard is cut into micro batches of at most
``micro_batch_size`` prompts, each runs one forward pass over all its K responses per prompt
and one backward pass, then ``engine.step()``. The loss is the mean over all prompts of the
step (all ranks), whatever the shard sizes. The driver passes the step's total prompt count,
from which every rank knows its weight and the number of passes all ranks make: a step runs no
collective beyond DeepSpeed's own gradient reduction.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import pyarrow as pa
import torch
from torch import Tensor

from actors.deepspeed_rank import DeepSpeedModel, Device, empty_pass, node_id, start_ranks
from actors.group import ActorGroup, SharedPlacement
from rlhf.algorithms import RankedLogps, get_preference_loss, preference_metrics
from rlhf.data.batch import PreferenceBatch, shard_bounds
from rlhf.data.loader import collate
from rlhf.data.table import REF_LOGPS, num_responses
from rlhf.models.deepspeed_config import TrainerConfig
from rlhf.models.hf import (
    batch_logps,
    load_causal_lm,
    shared_prompt_blocker,
    shared_prompt_logps,
)
from rlhf.models.weight_broadcast import Manifest

log = logging.getLogger(__name__)

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
        self._tables: dict[str, tuple[pa.Table, int]] = {}
        self.engine, self.device = self.model.engine, self.model.device
        blocker = shared_prompt_blocker(self.engine) if config.share_prompt else None
        self.share_prompt = config.share_prompt and blocker is None
        if blocker:
            log.warning(
                "trainer.share_prompt is off for this model: %s; each response runs as its "
                "own sequence",
                blocker,
            )

    # --- training ---------------------------------------------------------------------------

    def hold_table(self, name: str, table: pa.Table, pad_token_id: int) -> None:
        """Keeps a tokenized preference table (with ``ref_logps``) for ``train_rows`` and
        ``eval_rows`` under ``name``, replacing any table of that name.

        The driver puts the table into the object store once; every rank maps it from there.
        Steps then carry row indices only.
        """
        self._tables[name] = (table, pad_token_id)

    def train_rows(self, name: str, indices: list[int]) -> dict[str, Any]:
        """``train_step`` on this rank's shard of rows ``indices`` of the held table ``name``."""
        return self.train_step(self._shard(name, indices), len(indices))

    def eval_rows(self, name: str, indices: list[int]) -> dict[str, Any]:
        """``eval_step`` on this rank's shard of rows ``indices`` of the held table ``name``."""
        return self.eval_step(self._shard(name, indices), len(indices))

    def _shard(self, name: str, indices: list[int]) -> PreferenceBatch:
        """This rank's prompts of a step, collated (``shard_bounds`` splits all steps)."""
        if name not in self._tables:
            raise KeyError(
                f"no table {name!r} held (held: {sorted(self._tables)}); hold_table first"
            )
        table, pad_token_id = self._tables[name]
        lo, hi = shard_bounds(len(indices), self.rank, self.world_size)
        if lo == hi:  # an empty shard still knows its K
            empty = torch.zeros((0, 0), dtype=torch.long)
            ref = None if REF_LOGPS.name not in table.column_names else torch.zeros(0)
            return PreferenceBatch(empty, empty, empty, ref, num_responses(table))
        return collate(table.take(indices[lo:hi]), pad_token_id)

    def train_step(self, batch: PreferenceBatch, total_prompts: int) -> dict[str, Any]:
        """One optimizer step on this rank's shard of a batch of ``total_prompts`` prompts.

        Returns this rank's part of the step's metrics, for ``merge_rank_metrics``: the prompt
        sums of loss, rewards/{chosen,rejected,margins,accuracies}, logps/{chosen,rejected};
        its prompts, tokens and seconds; DeepSpeed's global grad_norm before clipping (NaN at
        zero_stage 0, where DeepSpeed does not report it) and the lr this step used.
        """
        start = time.perf_counter()
        lr = self.model.lr()
        # Each prompt weighs 1/total in the step; DeepSpeed averages gradients over ranks.
        weight = self.world_size / max(total_prompts, 1)
        ranked = []
        for chunk in self._micro_batches(batch, total_prompts):
            if len(chunk) == 0:  # no prompts left on this rank: keep the collectives in step
                self.engine.backward(empty_pass(self.engine), scale_wrt_gas=False)
                continue
            logps = self._forward(batch, chunk)
            losses = self.loss_fn(logps, self.beta, **self.loss_options)
            self.engine.backward(losses.sum() * weight, scale_wrt_gas=False)
            ranked.append(
                (dataclasses.replace(logps, policy=logps.policy.detach()), losses.detach())
            )
        self.engine.step()
        return self._rank_metrics(batch, ranked, start) | {
            "grad_norm": self.model.grad_norm(),
            "lr": lr,
        }

    @torch.no_grad()
    def eval_step(self, batch: PreferenceBatch, total_prompts: int) -> dict[str, Any]:
        """The train step's metrics without a gradient or an update."""
        start = time.perf_counter()
        self.engine.eval()
        ranked = []
        try:
            for chunk in self._micro_batches(batch, total_prompts):
                if len(chunk) == 0:  # ZeRO-3 gathers run inside the forward: take part
                    empty_pass(self.engine)
                    continue
                logps = self._forward(batch, chunk)
                ranked.append((logps, self.loss_fn(logps, self.beta, **self.loss_options)))
        finally:
            self.engine.train()
        return self._rank_metrics(batch, ranked, start)

    def _micro_batches(self, batch: PreferenceBatch, total_prompts: int) -> list[Tensor]:
        """This rank's micro batches (prompt indices), as many as every other rank's.

        All ranks must run the same number of forward/backward passes (ZeRO's collectives run
        inside them). The largest shard of ``total_prompts`` (``PreferenceBatch.shard``) sets
        the count; a rank with fewer prompts gets smaller, possibly empty, micro batches.
        """
        lo, hi = shard_bounds(total_prompts, 0, self.world_size)  # rank 0's is the largest
        largest = hi - lo
        if batch.num_prompts > largest:
            raise ValueError(
                f"a shard of {batch.num_prompts} prompts is larger than the largest of "
                f"{total_prompts} prompts over {self.world_size} ranks ({largest})"
            )
        num_micro = max(1, -(-largest // self.config.micro_batch_size))
        return list(torch.arange(batch.num_prompts).tensor_split(num_micro))

    def _forward(self, batch: PreferenceBatch, prompts: Tensor) -> RankedLogps:
        """One forward pass over the K responses of the given (at least one) prompts."""
        k = batch.num_responses
        rows = (prompts[:, None] * k + torch.arange(k)).flatten()
        on = {
            name: getattr(batch, name)[rows].to(self.device)
            for name in ("input_ids", "attention_mask", "loss_mask")
        }
        # Trim right padding shared by the whole micro batch.
        width = int(on["attention_mask"].sum(-1).max())
        on = {name: value[:, :width] for name, value in on.items()}
        ref = None if batch.ref_logps is None else batch.ref_logps[rows].to(self.device)
        sub = PreferenceBatch(**on, ref_logps=ref, num_responses=k)
        if self.share_prompt:
            logps = shared_prompt_logps(self.engine, sub.shared_prompt_rows())
        else:
            logps, _ = batch_logps(self.engine, sub.input_ids, sub.attention_mask, sub.loss_mask)
        return RankedLogps(
            policy=logps.view(-1, k),
            reference=None if ref is None else ref.view(-1, k).to(logps.dtype),
            lengths=sub.response_lengths.view(-1, k),
        )

    def _rank_metrics(
        self,
        batch: PreferenceBatch,
        ranked: list[tuple[RankedLogps, Tensor]],
        start: float,
    ) -> dict[str, Any]:
        """This rank's prompt sums of the preference metrics, and its counts and seconds."""
        sums = dict.fromkeys(_METRIC_KEYS, 0.0)
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
            sums = {key: float(values[key]) * batch.num_prompts for key in _METRIC_KEYS}
        return {
            "sums": sums,
            "prompts": batch.num_prompts,
            "tokens": int(batch.attention_mask.sum()),
            "seconds": time.perf_counter() - start,
        }

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


def merge_rank_metrics(parts: list[dict[str, Any]]) -> dict[str, float]:
    """The step's metrics from every rank's ``train_step`` or ``eval_step`` answer.

    Preference metrics are prompt-weighted means over all ranks (a rank-local value would
    depend on the sharding); prompts and tokens are totals, tokens_per_s runs over the slowest
    rank's time; grad_norm and lr (train steps) are the same on every rank and come from rank 0.
    """
    prompts = sum(part["prompts"] for part in parts)
    tokens = sum(part["tokens"] for part in parts)
    seconds = max(part["seconds"] for part in parts)
    metrics = {
        key: sum(part["sums"][key] for part in parts) / max(prompts, 1) for key in _METRIC_KEYS
    }
    metrics.update(prompts=prompts, tokens=tokens, tokens_per_s=tokens / max(seconds, 1e-9))
    metrics.update({key: float(parts[0][key]) for key in ("grad_norm", "lr") if key in parts[0]})
    return metrics


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

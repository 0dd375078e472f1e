"""The preference (DPO-family) policy: a ``TrainerRank`` whose step is ``PreferenceStep``.

The driver starts ``num_ranks`` ranks in an ``ActorGroup`` (``start_policy_trainers``), shards
each batch by prompt (``group.call_sharded("train_step", batch, batch.num_prompts)``, or
``train_rows`` on a held table) and merges the ranks' answers with
``rlhf.driver.metrics.merge_rank_metrics``. DeepSpeed owns the optimizer, the lr schedule,
clipping, ZeRO and offload.

A train step is one optimizer step: the rank's shard is cut into micro batches of at most
``micro_batch_prompts`` prompts, each runs one forward pass over all its K responses per prompt
and one backward pass. The loss is the mean over all prompts of the step (all ranks), whatever
the shard sizes (see ``actors.rank``). The driver passes the step's total prompt count, from
which every rank knows its weight and the number of passes all ranks make: a step runs no
collective beyond DeepSpeed's own gradient reduction.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import torch
from torch import Tensor

from actors.deepspeed_rank import DeepSpeedModel, Device
from actors.rank import RoleSetup, TrainerRank, start_role
from rlhf.algorithms import (
    RankedLogps,
    get_preference_loss,
    preference_metrics,
    unpaired_metrics,
)
from rlhf.data.batch import PreferenceBatch, shard_bounds
from rlhf.data.loader import collate
from rlhf.data.table import REF_LOGPS, is_unpaired, num_responses
from rlhf.models.deepspeed_config import DEFAULT_LOAD, ModelLoad, PreferenceTrainerConfig
from rlhf.models.hf import (
    batch_logps,
    load_causal_lm,
    shared_prompt_blocker,
    shared_prompt_logps,
)

if TYPE_CHECKING:  # annotations only: the rank and its step import without Ray
    from actors.group import ActorGroup, SharedPlacement

log = logging.getLogger(__name__)


class PreferenceStep:
    """A preference loss by name on the policy's ``DeepSpeedModel``; the unit is a prompt.

    Args:
        model: this rank's DeepSpeed model of the policy.
        loss: a registered preference loss name (``rlhf.algorithms.get_preference_loss``).
        beta: the KL strength of the loss; ``loss_options`` its keyword options.
    """

    def __init__(
        self,
        model: DeepSpeedModel,
        loss: str,
        beta: float,
        loss_options: dict[str, Any] | None = None,
    ) -> None:
        self.loss_fn = get_preference_loss(loss)  # unknown names fail here, not mid-run
        self.beta = beta
        self.loss_options = dict(loss_options or {})
        self.model = model
        config = model.config
        blocker = shared_prompt_blocker(model.engine) if config.share_prompt else None
        self.share_prompt = config.share_prompt and blocker is None
        if blocker:
            log.warning(
                "trainer.share_prompt is off for this model: %s; each response runs as its "
                "own sequence",
                blocker,
            )

    def collate(self, table: pa.Table, indices: list[int], pad_token_id: int) -> PreferenceBatch:
        """Rows ``indices`` of a tokenized preference table (with ``ref_logps``) as a batch."""
        if not indices:  # an empty shard still knows its K
            empty = torch.zeros((0, 0), dtype=torch.long)
            ref = None if REF_LOGPS.name not in table.column_names else torch.zeros(0)
            labels = torch.zeros(0, dtype=torch.bool) if is_unpaired(table) else None
            return PreferenceBatch(empty, empty, empty, ref, num_responses(table), labels)
        return collate(table.take(indices), pad_token_id)

    def micro_batches(
        self, batch: PreferenceBatch, total: int, num_micro: int | None = None
    ) -> Iterator[PreferenceBatch | None]:
        """This rank's micro batches of at most ``micro_batch_prompts`` prompts, on the device.

        The largest shard of ``total`` prompts (``shard_bounds``) sets the count for every
        rank (unless ``num_micro`` fixes it); a rank with fewer prompts gets smaller, possibly
        empty (None), micro batches.
        """
        world_size = self.model.world_size
        lo, hi = shard_bounds(total, 0, world_size)  # rank 0's is the largest
        largest = hi - lo
        if batch.num_prompts > largest:
            raise ValueError(
                f"a shard of {batch.num_prompts} prompts is larger than the largest of "
                f"{total} prompts over {world_size} ranks ({largest})"
            )
        if num_micro is None:
            num_micro = max(1, -(-largest // self.model.config.micro_batch_prompts))
        for prompts in torch.arange(batch.num_prompts).tensor_split(num_micro):
            yield self._micro(batch, prompts) if len(prompts) else None

    def _micro(self, batch: PreferenceBatch, prompts: Tensor) -> PreferenceBatch:
        """The K responses of the given prompts on the device, shared right padding trimmed."""
        k = batch.num_responses
        rows = (prompts[:, None] * k + torch.arange(k)).flatten()
        device = self.model.device
        on = {
            name: getattr(batch, name)[rows].to(device)
            for name in ("input_ids", "attention_mask", "loss_mask")
        }
        width = int(on["attention_mask"].sum(-1).max())
        on = {name: value[:, :width] for name, value in on.items()}
        ref = None if batch.ref_logps is None else batch.ref_logps[rows].to(device)
        labels = None if batch.labels is None else batch.labels[prompts].to(device)
        return PreferenceBatch(**on, ref_logps=ref, num_responses=k, labels=labels)

    def loss(self, micro: PreferenceBatch) -> tuple[Tensor, dict[str, float]]:
        """The summed loss of the micro batch's prompts; prompt sums of ``loss`` and of every
        metric: ``preference_metrics``, or ``unpaired_metrics`` for unpaired feedback (KTO).

        A loss on unpaired feedback is evaluated on held-out pairs too (whether it orders
        chosen over rejected): their metrics, without a loss.
        """
        logps = self._logps(micro)
        n = micro.num_prompts
        detached = dataclasses.replace(logps, policy=logps.policy.detach())
        metrics = unpaired_metrics if logps.labels is not None else preference_metrics
        sums = {key: value * n for key, value in metrics(detached, self.beta).items()}
        if self.loss_fn.metadata["unpaired"] and logps.labels is None:
            if torch.is_grad_enabled():
                raise ValueError(
                    f"loss {self.loss_fn.name!r} trains on unpaired feedback ({{prompt, "
                    "completion, label} rows); this batch holds preferences"
                )
            return logps.policy.new_zeros(()), sums
        losses = self.loss_fn(logps, self.beta, **self.loss_options)
        return losses.sum(), {"loss": float(losses.detach().sum()), **sums}

    def _logps(self, micro: PreferenceBatch) -> RankedLogps:
        """One forward pass over the micro batch's responses."""
        k = micro.num_responses
        engine = self.model.engine
        if self.share_prompt:
            logps = shared_prompt_logps(engine, micro.shared_prompt_rows())
        else:
            logps, _ = batch_logps(engine, micro.input_ids, micro.attention_mask, micro.loss_mask)
        ref = micro.ref_logps
        return RankedLogps(
            policy=logps.view(-1, k),
            reference=None if ref is None else ref.view(-1, k).to(logps.dtype),
            lengths=micro.response_lengths.view(-1, k),
            labels=micro.labels,
        )

    def counts(self, batch: PreferenceBatch) -> dict[str, float]:
        """The shard's prompts (the unit) and tokens."""
        return {"prompts": batch.num_prompts, "tokens": int(batch.attention_mask.sum())}


class PolicyTrainer(TrainerRank):
    """``TrainerRank`` by the name Ray lists the preference policy's ranks under (it adds
    nothing; ``start_policy_trainers`` gives it a ``PreferenceStep``)."""


def start_policy_trainers(
    model_path: str,
    config: PreferenceTrainerConfig,
    loss: str,
    beta: float,
    loss_options: dict[str, Any] | None = None,
    device: Device = "cpu",
    strategy: str | None = None,
    shared: SharedPlacement | None = None,
    load: ModelLoad = DEFAULT_LOAD,
) -> ActorGroup:
    """Starts the preference policy's ranks (see ``actors.rank.start_role``)."""
    step = functools.partial(PreferenceStep, loss=loss, beta=beta, loss_options=loss_options)
    setup = RoleSetup(model_path, config, load_causal_lm, step, device, load)
    return start_role(PolicyTrainer, setup, strategy, shared)

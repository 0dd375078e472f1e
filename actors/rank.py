"""The rank of every training role: one ``DeepSpeedModel`` composed with the role's step.

A training role (the DPO policy, the PPO policy, the PPO critic) is ``num_ranks`` data-parallel
``TrainerRank`` actors in an ``ActorGroup``. A rank owns what every role shares: the DeepSpeed
engine (``actors.deepspeed_rank.DeepSpeedModel``), the step loop (micro batches, backward,
optimizer step, metric sums), weights out (sync, broadcast, ``save_pretrained``) and
checkpoints. What differs lives in a small step object (``RoleStep``): how a shard is cut
into micro batches, the forward and loss of one micro batch, the metrics it adds up.

``TrainerRank`` is a plain class: the ``ActorGroup`` makes it a Ray actor, and a test (or a
script on a GPU machine) builds one directly, without Ray.

Loss weighting: every step is one optimizer step over the whole step of all ranks, whatever the
shard sizes. A step's loss sums over its units (prompts for preference losses, response tokens
for PPO's token means), divided by the step's ``total`` units of all ranks; DeepSpeed averages
gradients over the ranks, hence the factor ``world_size``. Each rank reports metric *sums*
with its unit count, and the driver divides (``rlhf.driver.metrics.merge_rank_metrics``).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import torch
import torch.distributed as dist
from torch import Tensor

from actors.deepspeed_rank import DeepSpeedModel, Device, empty_pass, node_id, trainer_env
from rlhf.data.batch import shard_bounds
from rlhf.files import replace_dir
from rlhf.models import lora
from rlhf.models.deepspeed_config import DEFAULT_LOAD, ModelLoad, TrainerConfig, check_device
from rlhf.models.hf import hf_token_logprobs
from rlhf.models.weight_broadcast import Manifest, WeightSender, manifest_of

if TYPE_CHECKING:  # annotations only: a rank is built and stepped without Ray
    from actors.deepspeed_rank import Rendezvous
    from actors.group import ActorGroup, SharedPlacement

SCORE_BATCH = 32  # sequences per forward pass of share_token_logprobs


class RoleStep(Protocol):
    """What one training role does on a rank's ``DeepSpeedModel``; ``TrainerRank`` runs it.

    Optional, for the roles that have them: ``score(micro) -> Tensor`` ([n, T] per-token
    values of a micro batch of a ``RolloutBatch``, for ``TrainerRank.score``) and
    ``collate(table, indices, pad_token_id) -> batch`` (rows of a held table, for
    ``TrainerRank.train_rows``).
    """

    def micro_batches(self, batch: Any, total: int, num_micro: int | None) -> Iterator[Any]:
        """This rank's micro batches of its shard, exactly as many as every other rank runs
        (ZeRO's collectives run inside the passes); ``None`` stands for an empty one.

        ``total``: the step's units over all ranks; ``num_micro``: the count when the driver
        fixes it (None: the step derives it from ``total``).
        """
        ...

    def loss(self, micro: Any) -> tuple[Tensor, dict[str, float]]:
        """The micro batch's loss summed over its units, and its metric sums (floats)."""
        ...

    def counts(self, batch: Any) -> dict[str, float]:
        """The shard's unit count under the unit's name ("prompts" or "tokens"), and its
        "tokens" (for throughput)."""
        ...


StepFactory = Callable[[DeepSpeedModel], RoleStep]


@dataclass(frozen=True)
class RoleSetup:
    """What every rank of a training role builds: its DeepSpeed model and its step.

    Args:
        model_path: the Hugging Face model directory the role starts from.
        config: the trainer settings (ZeRO stage, optimizer, schedule, batch sizes).
        load_model: builds the module to train (``rlhf.models.hf.load_causal_lm``,
            ``load_value_model``); see ``DeepSpeedModel``.
        make_step: builds the role's ``RoleStep`` on the model (e.g. a ``functools.partial``
            of the step class with the role's settings).
        device: ``"cpu"`` (gloo) or ``"cuda"`` (nccl; the actor sees its one GPU as cuda:0).
        load: the job's seed, model dtype and remote-code setting (``ModelConfig.for_trainers``).
    """

    model_path: str
    config: TrainerConfig
    load_model: Callable[..., torch.nn.Module]
    make_step: StepFactory
    device: Device = "cpu"
    load: ModelLoad = DEFAULT_LOAD


class TrainerRank:
    """One data-parallel rank of a training role: a ``DeepSpeedModel`` and the role's step.

    Built by an ``ActorGroup`` as ``TrainerRank(rank, world_size, rendezvous, setup)``;
    ``around`` composes one from a model built elsewhere. Each role starts it under a name of
    its own, so Ray lists its actors by role (``actors.trainer.PolicyTrainer``,
    ``actors.ppo_policy.PPOPolicy``, ``actors.critic.Critic``).
    """

    def __init__(
        self, rank: int, world_size: int, rendezvous: Rendezvous, setup: RoleSetup
    ) -> None:
        model = DeepSpeedModel(
            rank,
            world_size,
            rendezvous,
            setup.model_path,
            setup.config,
            setup.load_model,
            setup.device,
            setup.load,
        )
        self._compose(model, setup.make_step)

    @classmethod
    def around(cls, model: DeepSpeedModel, make_step: StepFactory) -> TrainerRank:
        """A rank around a model built elsewhere: a ``DeepSpeedModel``, or in a test a stand-in
        with its attributes (``engine``, ``device``, ``rank``, ``world_size``, ``config``,
        ``lr()``, ``grad_norm()``)."""
        self = cls.__new__(cls)
        self._compose(model, make_step)
        return self

    def _compose(self, model: DeepSpeedModel, make_step: StepFactory) -> None:
        self.model = model
        self.step = make_step(model)
        self._tables: dict[str, tuple[pa.Table, int]] = {}
        self._batches: dict[str, Any] = {}
        self._broadcast_adapter = False  # what the weight group carries (open_weight_broadcast)

    # --- steps ------------------------------------------------------------------------------

    def train_step(self, batch: Any, total: int, num_micro: int | None = None) -> dict[str, Any]:
        """One optimizer step on this rank's shard of a step of ``total`` units (all ranks).

        Returns this rank's part of the step's metrics: ``sums`` (metric sums over its units),
        the step's ``counts``, its seconds, DeepSpeed's global grad_norm before clipping (NaN at
        zero_stage 0, where DeepSpeed reports none) and the lr this step used.
        """
        start = time.perf_counter()
        engine = self.model.engine
        lr = self.model.lr()
        scale = self.model.world_size / max(total, 1)
        sums: dict[str, float] = {}
        for micro in self.step.micro_batches(batch, total, num_micro):
            if micro is None:  # nothing left on this rank: keep the collectives in step
                engine.backward(empty_pass(engine), scale_wrt_gas=False)
                continue
            loss, parts = self.step.loss(micro)
            engine.backward(loss * scale, scale_wrt_gas=False)
            _add(sums, parts)
        engine.step()
        return self._answer(batch, sums, start) | {"grad_norm": self.model.grad_norm(), "lr": lr}

    @torch.no_grad()
    def eval_step(self, batch: Any, total: int, num_micro: int | None = None) -> dict[str, Any]:
        """The train step's metrics without a gradient or an update."""
        start = time.perf_counter()
        sums: dict[str, float] = {}
        with self._eval_mode():
            for micro in self.step.micro_batches(batch, total, num_micro):
                if micro is None:  # ZeRO-3 gathers run inside the forward: take part
                    empty_pass(self.model.engine)
                    continue
                _add(sums, self.step.loss(micro)[1])
        return self._answer(batch, sums, start)

    @torch.no_grad()
    def score(self, batch: Any, num_micro: int) -> Tensor:
        """[n, T] the step's per-token values of this shard's rows (``step.score``: log-probs
        for the PPO policy, values for the critic), 0 off the response tokens."""
        width = batch.input_ids.shape[1]
        parts = [torch.zeros((0, width), dtype=torch.float32)]
        with self._eval_mode():
            for micro in self.step.micro_batches(batch, 0, num_micro):
                if micro is None:
                    empty_pass(self.model.engine)
                    continue
                values = self.step.score(micro).float().cpu()
                parts.append(torch.nn.functional.pad(values, (0, width - values.shape[1])))
        return torch.cat(parts)  # micro batches are consecutive rows

    def _answer(self, batch: Any, sums: dict[str, float], start: float) -> dict[str, Any]:
        return {"sums": sums, **self.step.counts(batch), "seconds": time.perf_counter() - start}

    @contextmanager
    def _eval_mode(self) -> Iterator[None]:
        self.model.engine.eval()
        try:
            yield
        finally:
            self.model.engine.train()

    # --- steps over rows of a held table ------------------------------------------------------

    def hold_table(self, name: str, table: pa.Table, pad_token_id: int) -> None:
        """Keeps a tokenized table for ``train_rows`` and ``eval_rows`` under ``name``,
        replacing any table of that name (roles whose step has ``collate``).

        The driver puts the table into the object store once; every rank maps it from there.
        Steps then carry row indices only, and each row is one unit of the step.
        """
        self._tables[name] = (table, pad_token_id)

    def train_rows(self, name: str, indices: list[int]) -> dict[str, Any]:
        """``train_step`` on this rank's shard of rows ``indices`` of the held table ``name``."""
        return self.train_step(self._rows(name, indices), len(indices))

    def eval_rows(self, name: str, indices: list[int]) -> dict[str, Any]:
        """``eval_step`` on this rank's shard of rows ``indices`` of the held table ``name``."""
        return self.eval_step(self._rows(name, indices), len(indices))

    def _rows(self, name: str, indices: list[int]) -> Any:
        """This rank's rows of a step, collated (``shard_bounds`` splits all steps)."""
        if name not in self._tables:
            raise KeyError(
                f"no table {name!r} held (held: {sorted(self._tables)}); hold_table first"
            )
        table, pad_token_id = self._tables[name]
        lo, hi = shard_bounds(len(indices), self.model.rank, self.model.world_size)
        return self.step.collate(table, indices[lo:hi], pad_token_id)

    # --- steps over rows of a held batch -------------------------------------------------------

    def hold_batch(self, name: str, batch: Any) -> None:
        """Keeps a whole batch of every rank's rows (a round's ``RolloutBatch``) under ``name``
        for ``train_held``, replacing any batch of that name.

        The driver puts the batch into the object store once per round and every rank maps it
        from there; each step then carries its row indices, not its rows pickled again.
        """
        self._batches[name] = batch

    def train_held(
        self, name: str, rows: list[int], total: int, num_micro: int | None = None
    ) -> dict[str, Any]:
        """``train_step`` on this rank's shard (``batch.shard``) of rows ``rows`` of the held
        batch ``name``: the same shard the driver's ``call_sharded`` of those rows would send."""
        if name not in self._batches:
            raise KeyError(
                f"no batch {name!r} held (held: {sorted(self._batches)}); hold_batch first"
            )
        step = self._batches[name].select(torch.as_tensor(rows, dtype=torch.long))
        return self.train_step(step.shard(self.model.rank, self.model.world_size), total, num_micro)

    # --- weights out ------------------------------------------------------------------------

    def state_dict_for_sync(self) -> dict[str, Tensor] | None:
        """Full weights with Hugging Face names from rank 0 (None from other ranks).

        Every rank must be called (ZeRO-3 gathers). Tied weights appear once.
        """
        return self.model.full_state_dict()

    def adapter_for_sync(self) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        """The LoRA adapter from rank 0: its tensors under PEFT's file names and its
        ``adapter_config.json`` dict (None from other ranks). Every rank must be called (ZeRO-3
        gathers); an error when the role trains without an adapter."""
        tensors = self.model.adapter_state_dict()
        return None if tensors is None else (tensors, self.model.adapter_config())

    def open_weight_broadcast(
        self, backend: str, timeout_s: float = 600.0, adapter: bool = False
    ) -> tuple[tuple[str, int], Manifest] | None:
        """Rank 0 starts the weight group's rendezvous; returns its address and the manifest of
        the weights (None on other ranks). The group's collectives wait ``timeout_s`` at most.
        ``adapter``: the group carries the LoRA adapter's tensors (``adapter_for_sync``), not
        the full weights. Every rank must be called (ZeRO-3 gathers)."""
        self._broadcast_adapter = adapter
        state = self._weights_out()
        if self.model.rank != 0:
            return None
        self._sender = WeightSender(backend, timeout_s)
        self._manifest = manifest_of(state.items(), timeout_s)
        return (self._sender.host, self._sender.port), self._manifest

    def join_weight_group(self, group_id: str, world: int) -> None:
        """Rank 0 forms the weight group ``group_id`` as its source (blocks until all joined)."""
        self._sender.join(group_id, world, self._manifest)

    def broadcast_weights(self) -> int:
        """Rank 0 broadcasts the full weights (or the adapter, as the group was opened) to the
        group; returns the bytes (0 on others). Every rank must be called (ZeRO-3 gathers)."""
        state = self._weights_out()
        return self._sender.send(state) if self.model.rank == 0 else 0

    def _weights_out(self) -> dict[str, Tensor] | None:
        """What the weight group carries: the adapter's tensors or the full weights."""
        if self._broadcast_adapter:
            return self.model.adapter_state_dict()
        return self.model.full_state_dict()

    def save_pretrained(self, path: str) -> None:
        """Writes a Hugging Face model directory (safetensors, config, tokenizer) at ``path``.

        With a LoRA adapter (``trainer.lora``) the directory holds the adapter in PEFT's format
        (``adapter_config.json``, ``adapter_model.safetensors``; loaded by
        ``peft.PeftModel.from_pretrained`` and by vLLM as a LoRA) and the tokenizer, and with
        ``save_merged`` the merged model in ``merged/`` under it. Rank 0 writes into a temporary
        sibling directory and renames it into place, so a reader never sees half a model; every
        rank must be called (ZeRO-3 gathers).
        """
        settings = self.model.lora
        adapter = None if settings is None else self.model.adapter_state_dict()
        merged = settings is None or settings.save_merged
        state = self.model.full_state_dict() if merged else None
        if self.model.rank == 0:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
            if adapter is not None:
                lora.save_adapter(tmp, adapter, self.model.adapter_config())
                self._save_tokenizer(tmp)
            if state is not None:
                model_dir = tmp if adapter is None else tmp / "merged"
                lora.base_model(self.model.engine.module).save_pretrained(
                    model_dir, state_dict=state
                )
                self._save_tokenizer(model_dir)
            replace_dir(tmp, target)
        dist.barrier()

    def _save_tokenizer(self, directory: Path) -> None:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(
                self.model.model_path, trust_remote_code=self.model.load.trust_remote_code
            )
        except (OSError, ValueError) as error:
            print(f"[trainer] no tokenizer copied from {self.model.model_path}: {error}")
            return
        tokenizer.save_pretrained(directory)

    def token_logprobs(self, sequences: list[list[int]]) -> list[list[float]] | None:
        """Per-token log-probs of given token ids under the current weights (L - 1 per sequence,
        as ``rlhf.models.hf.hf_token_logprobs``), from rank 0 (None from other ranks). Every
        rank must be called with the same sequences (ZeRO-3 gathers in the forward)."""
        result = hf_token_logprobs(self.model.engine.module, sequences)
        return result if self.model.rank == 0 else None

    def share_token_logprobs(self, sequences: list[list[int]], most: int) -> list[list[float]]:
        """:meth:`token_logprobs` of this rank's share of a set of sequences, from every rank.

        ``most``: the largest share any rank got. A rank runs as many forward passes as that
        share needs, the last ones empty when its own needs fewer, so that ZeRO-3's gathers
        inside them stay in step across the ranks.
        """
        module = self.model.engine.module  # as token_logprobs, the empty passes too
        result = hf_token_logprobs(module, sequences, SCORE_BATCH)
        passes = math.ceil(most / SCORE_BATCH) - math.ceil(len(sequences) / SCORE_BATCH)
        with self._eval_mode(), torch.no_grad():
            for _ in range(passes):
                empty_pass(module)
        return result

    def weights_digest(self) -> str:
        """SHA-256 of this rank's view of the full weights (equal on all ranks when in sync)."""
        return self.model.weights_digest()

    # --- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(self, directory: str, tag: str, client_state: dict[str, Any]) -> None:
        """Saves weights, optimizer and lr-scheduler state (DeepSpeed format); all ranks.

        With a LoRA adapter only the trainable weights (the adapter) are saved: the frozen
        base comes from the model directory again on resume."""
        self.model.engine.save_checkpoint(
            str(directory),
            tag=tag,
            client_state=client_state,
            exclude_frozen_parameters=self.model.lora is not None,
        )

    def load_checkpoint(self, directory: str, tag: str) -> dict[str, Any]:
        """Restores a ``save_checkpoint``; returns its ``client_state``. All ranks."""
        path, client_state = self.model.engine.load_checkpoint(
            str(directory),
            tag=tag,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
            load_module_strict=self.model.lora is None,  # an adapter's lacks the frozen base
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint with tag {tag!r} in {directory}")
        return client_state

    # --- liveness ---------------------------------------------------------------------------

    def ping(self) -> bool:
        """True once the rank is up (its constructor has finished)."""
        return True

    def node_id(self) -> str:
        """The Ray node this rank runs on."""
        return node_id()


def start_role(
    cls: type[TrainerRank],
    setup: RoleSetup,
    strategy: str | None = None,
    shared: SharedPlacement | None = None,
) -> ActorGroup:
    """Starts ``setup.config.num_ranks`` ranks of a training role in one placement group.

    ``cls``: ``TrainerRank`` under the role's name. ``strategy`` overrides the config's
    ``placement_strategy``; ``shared``: a placement group shared with colocated roles
    (``ray.colocate``), rank i in its bundle i. The role's ``start_*`` function passes them on,
    and the job's seed, dtype and remote-code setting (``ModelConfig.for_trainers``) as
    ``setup.load``.
    """
    from actors.group import ActorGroup  # the Ray side of a rank

    config = setup.config
    config.validate()
    check_device(config, setup.device)
    return ActorGroup(
        cls,
        config.num_ranks,
        args=(setup,),
        num_cpus_per_rank=config.num_cpus_per_rank,
        num_gpus_per_rank=config.num_gpus_per_rank,
        resources_per_rank=config.resources_per_rank,
        strategy=strategy or config.placement_strategy,
        env_vars=trainer_env(setup.device),
        shared=shared,
    )


def _add(sums: dict[str, float], parts: dict[str, float]) -> None:
    """Adds a micro batch's metric sums into the step's (whatever keys the step reports)."""
    for key, value in parts.items():
        sums[key] = sums.get(key, 0.0) + float(value)

"""The broadcast weight sync (``samplers.sync: broadcast``): one process group per job.

Trainer rank 0 is the source (group rank 0); every sampler engine, and the reference when it
moves with the policy, receives (ranks 1..). The driver forms the group once, when the job's
actors have started (:meth:`BroadcastSync.open`), and ``sync_weights`` then sends through it
instead of the object store. A receiver that Ray restarted is in no group any more: the next
sync sees it (each receiver reports the group it joined) and forms a new group with a new id
before sending, so ``rlhf.driver.retry``'s recover-and-retry works unchanged. The group ends
with the job's actors (the job's scope kills them; :meth:`BroadcastSync.kill` forgets it).

No wait without a bound: every call the driver waits for here, and the group's own rendezvous
and collectives, time out after ``timeout_s`` (``ray.call_timeout_s``), and a receiver or trainer
rank that dies while the group forms or a sync runs is named at once
(``rlhf.driver.retry.bounded_get``), not after gloo's timeout.

The backend follows ``device``: gloo on CPUs, NCCL on GPUs (``weight_broadcast.BACKENDS``;
the NCCL branch is untested here, these machines have no GPU).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import ray

from rlhf.driver.retry import bounded_get, ranks
from rlhf.models.weight_broadcast import BACKENDS, new_group_id

log = logging.getLogger(__name__)

# The open broadcast of each trainer group (what ``sync_weights`` looks up).
_OPEN: weakref.WeakKeyDictionary[Any, BroadcastSync] = weakref.WeakKeyDictionary()


class BroadcastSync:
    """A weight group between trainer rank 0 and the given receivers.

    Args:
        trainers: the policy ``ActorGroup`` (its ranks have ``open_weight_broadcast``,
            ``join_weight_group`` and ``broadcast_weights``).
        samplers: the sampler actors; ``reference``: the reference server when it moves with the
            policy (None otherwise).
        device: "cpu" or "cuda", the job's device; it picks the backend.
        timeout_s: the bound of every wait (``ray.call_timeout_s``), the group's too.
    """

    def __init__(
        self,
        trainers,
        samplers: list,
        reference=None,
        device: str = "cpu",
        timeout_s: float = 600.0,
    ) -> None:
        self.trainers, self.samplers, self.reference = trainers, list(samplers), reference
        self.backend = BACKENDS[device]
        self.timeout_s = timeout_s
        self.generation = 0
        self.group_id: str | None = None
        opened = bounded_get(
            trainers.call("open_weight_broadcast", self.backend, timeout_s),
            ranks("trainer", len(trainers)),
            timeout_s,
            "opening the weight broadcast",
        )
        self.address, self.manifest = opened[0]

    @classmethod
    def open(
        cls,
        trainers,
        samplers: list,
        reference=None,
        device: str = "cpu",
        timeout_s: float = 600.0,
    ) -> BroadcastSync:
        """Forms the group and registers it for ``sync_weights(trainers, ...)``."""
        sync = cls(trainers, samplers, reference, device, timeout_s)
        sync.form()
        _OPEN[trainers] = sync
        return sync

    def receivers(self) -> list:
        """The receiving actors, in group rank order (rank i + 1)."""
        return self.samplers + ([self.reference] if self.reference is not None else [])

    def receiver_names(self) -> list[str]:
        """Their names in errors: "sampler 0", ..., "reference"."""
        names = [f"sampler {i}" for i in range(len(self.samplers))]
        return names + (["reference"] if self.reference is not None else [])

    def serves(self, samplers: list, reference=None) -> bool:
        """True when these are exactly the group's receivers (a sync to a subset, such as a
        recover that re-syncs the samplers alone, goes through the object store)."""
        return [_id(a) for a in samplers] == [_id(a) for a in self.samplers] and _id(
            reference
        ) == _id(self.reference)

    def form(self) -> None:
        """Forms a new group (new id) of trainer rank 0 and every receiver; all join at once."""
        self.generation += 1
        group_id = new_group_id(self.generation)  # its secret goes only to the group's ranks
        receivers = self.receivers()
        world = 1 + len(receivers)
        refs = [self.trainers.actors[0].join_weight_group.remote(group_id, world)]
        refs += [
            actor.join_weight_group.remote(
                self.address, group_id, rank, world, self.backend, self.manifest
            )
            for rank, actor in enumerate(receivers, start=1)
        ]
        names = ["trainer rank 0", *self.receiver_names()]
        bounded_get(refs, names, self.timeout_s, "forming the weight broadcast group")
        self.group_id = group_id

    def sync(self, version: int | None = None) -> int:
        """Broadcasts the trainer's weights; returns the bytes sent (once, whatever the count
        of receivers). Re-forms the group first if a receiver was restarted since."""
        names = self.receiver_names()
        joined = bounded_get(
            [actor.weight_group.remote() for actor in self.receivers()],
            names,
            self.timeout_s,
            "weight sync",
        )
        if any(group_id != self.group_id for group_id in joined):
            log.warning("weight sync: a receiver was restarted; forming a new broadcast group")
            self.form()
        refs = [sampler.receive_weights.remote(version) for sampler in self.samplers]
        if self.reference is not None:
            refs.append(self.reference.receive_weights.remote())
        sends = self.trainers.call("broadcast_weights")
        # One wait for all: the first to fail is named (a receiver that died is an actor
        # failure the retry handles), while the others may wait for it in the broadcast.
        names += ranks("trainer", len(sends))
        return bounded_get(refs + sends, names, self.timeout_s, "weight sync")[len(refs)]

    def kill(self) -> None:
        """Forgets the group (its processes end with the job's actors)."""
        _OPEN.pop(self.trainers, None)


def open_broadcast(trainers) -> BroadcastSync | None:
    """The broadcast formed for this trainer group, if any."""
    return _OPEN.get(trainers)


class AdapterSync:
    """The LoRA sync (``trainer.lora.r > 0``, ``samplers.lora_sync: adapter``): only the
    policy's adapter travels, through the object store once (megabytes where the model is
    gigabytes), and each sampler adds it to its engine, which keeps the base weights, as a new
    adapter (``Sampler.load_adapter``).

    A reference server that moves with the policy (``reference_update: previous_round`` with
    ``reference.backend`` vllm or hf) holds no adapter: it gets the merged weights as before.
    """

    def __init__(self, trainers) -> None:
        self.trainers = trainers

    @classmethod
    def open(cls, trainers) -> AdapterSync:
        """Registers the adapter sync for ``sync_weights(trainers, ...)``."""
        sync = cls(trainers)
        _ADAPTERS[trainers] = sync
        return sync

    def sync(
        self, samplers: list, reference=None, version: int | None = None, timeout_s: float = 600.0
    ) -> int:
        """Loads the trainer's adapter into every sampler (and merged weights into
        ``reference``); returns the bytes sent: the adapter's, plus the merged weights'."""
        tensors, config = self._gather("adapter_for_sync", timeout_s)
        handle = ray.put(tensors)
        refs = [sampler.load_adapter.remote(handle, config, version) for sampler in samplers]
        names = [f"sampler {i}" for i in range(len(samplers))]
        sent = [tensors]
        if reference is not None:
            sent.append(self._gather("state_dict_for_sync", timeout_s))
            refs.append(reference.load_weights.remote(sent[-1]))
            names.append("reference")
        bounded_get(refs, names, timeout_s, "adapter sync")
        return sum(t.numel() * t.element_size() for part in sent for t in part.values())

    def _gather(self, method: str, timeout_s: float):
        """Rank 0's answer to ``method``, called on every rank (ZeRO-3 gathers)."""
        refs = self.trainers.call(method)
        return bounded_get(refs, ranks("trainer", len(refs)), timeout_s, "adapter sync")[0]

    def kill(self) -> None:
        """Forgets the sync (the job's scope calls it at the end)."""
        _ADAPTERS.pop(self.trainers, None)


# The adapter sync of each trainer group that has one (what ``sync_weights`` looks up).
_ADAPTERS: weakref.WeakKeyDictionary[Any, AdapterSync] = weakref.WeakKeyDictionary()


def open_adapter_sync(trainers) -> AdapterSync | None:
    """The adapter sync registered for this trainer group, if any."""
    return _ADAPTERS.get(trainers)


def _id(actor) -> str | None:
    return None if actor is None else actor._actor_id.hex()

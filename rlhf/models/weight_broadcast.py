"""Broadcasting trained weights from trainer rank 0 to the engines over a side process group.

The object-store sync (``rlhf.driver.online.sync_weights``'s default) copies the state dict
into Ray's object store and every engine reads it from there. The broadcast sync instead forms
one process group per job between trainer rank 0 (rank 0 of the group, the source) and every
receiving engine worker (ranks 1..), rendezvousing through a ``TCPStore`` that rank 0 hosts, and
sends the weights as one flat buffer per dtype. The group is built from the store directly
(``ProcessGroupGloo(store, rank, size)``), so it touches neither the trainers' default DeepSpeed
group nor vLLM's own.

The code is the same on CPUs and GPUs; only the backend differs (:data:`BACKENDS`). The NCCL
branch is untested here: these machines have no GPU.

What travels: a :class:`Manifest` (names, dtypes, shapes, offsets) once, when the group forms,
then at each sync only the buffers.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

# The one device setting: gloo on CPUs (tested here), NCCL on GPUs (untested here: no GPU).
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}


@dataclass(frozen=True)
class TensorSlot:
    """Where one named tensor lies in its dtype's flat buffer."""

    name: str  # Hugging Face name
    dtype: str  # e.g. "float32"
    shape: tuple[int, ...]
    offset: int  # in elements, from the start of the dtype's buffer


@dataclass(frozen=True)
class Manifest:
    """The layout of the flat buffers: one per dtype, in ``sizes``' order."""

    slots: tuple[TensorSlot, ...]
    sizes: dict[str, int]  # dtype -> elements in its buffer

    @property
    def nbytes(self) -> int:
        """Bytes one sync sends."""
        return sum(n * _dtype(d).itemsize for d, n in self.sizes.items())


def manifest_of(named_tensors: Iterable[tuple[str, Tensor]]) -> Manifest:
    """The layout of these tensors; a tensor seen under an earlier name (tied weights) is left
    out, as the receiving model loads it once."""
    slots, sizes, seen = [], {}, set()
    for name, tensor in named_tensors:
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if key in seen:
            continue
        seen.add(key)
        dtype = str(tensor.dtype).removeprefix("torch.")
        offset = sizes.get(dtype, 0)
        slots.append(TensorSlot(name, dtype, tuple(tensor.shape), offset))
        sizes[dtype] = offset + tensor.numel()
    return Manifest(tuple(slots), sizes)


def pack(named_tensors: dict[str, Tensor], manifest: Manifest, device: str = "cpu") -> list[Tensor]:
    """The manifest's flat buffers (one per dtype, ``manifest.sizes`` order) filled from
    ``named_tensors``; a missing name or a changed shape or dtype is an error naming it."""
    buffers = {d: torch.empty(n, dtype=_dtype(d), device=device) for d, n in manifest.sizes.items()}
    for slot in manifest.slots:
        tensor = named_tensors.get(slot.name)
        if tensor is None:
            raise KeyError(f"weight {slot.name!r} of the sync manifest is not in the state dict")
        if tuple(tensor.shape) != slot.shape or str(tensor.dtype) != f"torch.{slot.dtype}":
            raise ValueError(
                f"weight {slot.name!r} is {tensor.dtype} {tuple(tensor.shape)}, the sync "
                f"manifest says {slot.dtype} {slot.shape}: the model changed since the group formed"
            )
        size = tensor.numel()
        buffers[slot.dtype][slot.offset : slot.offset + size].copy_(tensor.reshape(-1))
    return list(buffers.values())


def unpack(manifest: Manifest, buffers: list[Tensor]) -> list[tuple[str, Tensor]]:
    """(name, tensor) pairs, views into ``buffers`` (as :func:`pack` filled them)."""
    by_dtype = dict(zip(manifest.sizes, buffers, strict=True))
    out = []
    for slot in manifest.slots:
        size = 1
        for dim in slot.shape:
            size *= dim
        flat = by_dtype[slot.dtype][slot.offset : slot.offset + size]
        out.append((slot.name, flat.view(slot.shape)))
    return out


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def _group(store: dist.Store, group_id: str, rank: int, world: int, backend: str, timeout_s: float):
    """A process group of ``world`` ranks over ``store`` alone (no default group involved)."""
    prefixed = dist.PrefixStore(f"{group_id}/", store)
    timeout = datetime.timedelta(seconds=timeout_s)
    if backend == "gloo":
        return dist.ProcessGroupGloo(prefixed, rank, world, timeout)
    if backend == "nccl":  # untested here (no GPU)
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(prefixed, rank, world, options)
    raise ValueError(
        f"weight broadcast backend {backend!r} is not one of {sorted(BACKENDS.values())}"
    )


def _broadcast(group, buffers: list[Tensor]) -> None:
    """Broadcasts each buffer from rank 0, as bytes (gloo and NCCL both move uint8)."""
    options = dist.BroadcastOptions()
    options.rootRank = 0
    for buffer in buffers:
        group.broadcast([buffer.view(torch.uint8)], options).wait()


class WeightSender:
    """Rank 0 of the weight group, on trainer rank 0: hosts the rendezvous and sends.

    Args:
        backend: "gloo" or "nccl" (see :data:`BACKENDS`).
        timeout_s: how long a collective waits for the other ranks.
    """

    def __init__(self, backend: str, timeout_s: float = 600.0) -> None:
        self.backend, self.timeout_s = backend, timeout_s
        # Port 0: the store binds a free port itself (no race with another process).
        self.store = dist.TCPStore("0.0.0.0", 0, is_master=True, wait_for_workers=False)
        self.port = self.store.port
        self.group = None
        self.manifest: Manifest | None = None

    def join(self, group_id: str, world: int, manifest: Manifest) -> None:
        """Forms the group ``group_id`` (blocks until all ``world`` ranks joined)."""
        self.group = _group(self.store, group_id, 0, world, self.backend, self.timeout_s)
        self.manifest = manifest

    def send(self, named_tensors: dict[str, Tensor]) -> int:
        """Broadcasts the weights; returns the bytes sent."""
        if self.group is None or self.manifest is None:
            raise RuntimeError("the weight group has not formed: call join() first")
        device = "cpu" if self.backend == "gloo" else "cuda"
        _broadcast(self.group, pack(named_tensors, self.manifest, device))
        return self.manifest.nbytes

    def close(self) -> None:
        """Leaves the group and stops the store."""
        self.group = None
        self.store = None


class WeightReceiver:
    """A receiving rank of the weight group (a vLLM worker, or a Hugging Face reference)."""

    def __init__(self) -> None:
        self.group = None
        self.group_id: str | None = None
        self.manifest: Manifest | None = None
        self.backend = "gloo"

    def join(
        self,
        address: tuple[str, int],
        group_id: str,
        rank: int,
        world: int,
        backend: str,
        manifest: Manifest,
        timeout_s: float = 600.0,
    ) -> None:
        """Joins group ``group_id`` as ``rank`` through rank 0's store at ``address``."""
        host, port = address
        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.TCPStore(host, port, is_master=False, timeout=timeout)
        self.group = _group(store, group_id, rank, world, backend, timeout_s)
        self.group_id, self.manifest, self.backend = group_id, manifest, backend

    def receive(self) -> list[tuple[str, Tensor]]:
        """The next broadcast weights, as (name, tensor) pairs."""
        if self.group is None or self.manifest is None:
            raise RuntimeError("this engine is in no weight group: the driver forms it first")
        device = (
            "cpu" if self.backend == "gloo" else torch.device("cuda", torch.cuda.current_device())
        )
        buffers = [
            torch.empty(n, dtype=_dtype(d), device=device) for d, n in self.manifest.sizes.items()
        ]
        _broadcast(self.group, buffers)
        return unpack(self.manifest, buffers)

    def close(self) -> None:
        """Leaves the group."""
        self.group, self.group_id = None, None

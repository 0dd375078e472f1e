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

What travels: a :class:`Manifest` (names, dtypes, shapes, offsets, and the group's timeout) once,
when the group forms, then at each sync only the buffers.

No wait without a bound: the rendezvous and every collective of the group time out after the
sender's ``timeout_s`` (the job's ``ray.call_timeout_s``), which the receivers take from the
manifest, so a rank that died leaves the others an error instead of a hang.

What listens: the store and each rank's gloo pairs bind the node's own address
(:func:`node_address`: the address Ray runs on, 127.0.0.1 in a local run), never every
interface. The store has no authentication of its own, so every key of a group lies under its
id, which holds a random secret (:func:`new_group_id`) that only the driver hands out: a
process without it cannot meet the group's ranks or read their addresses.
"""

from __future__ import annotations

import datetime
import secrets
import socket
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
    """The layout of the flat buffers: one per dtype, in ``sizes``' order; and how long the
    group's rendezvous and collectives wait for a rank."""

    slots: tuple[TensorSlot, ...]
    sizes: dict[str, int]  # dtype -> elements in its buffer
    timeout_s: float = 600.0

    @property
    def nbytes(self) -> int:
        """Bytes one sync sends."""
        return sum(n * _dtype(d).itemsize for d, n in self.sizes.items())


def manifest_of(named_tensors: Iterable[tuple[str, Tensor]], timeout_s: float = 600.0) -> Manifest:
    """The layout of these tensors (a tensor seen under an earlier name, tied weights, is left
    out, as the receiving model loads it once), with the group's ``timeout_s``."""
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
    return Manifest(tuple(slots), sizes, timeout_s)


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


def node_address() -> str:
    """This node's address for our listeners: the one Ray runs on (127.0.0.1 when Ray was
    started on loopback, as a local run does), or 127.0.0.1 outside Ray (or without it installed,
    as on a GPU machine that runs the trainer alone)."""
    try:
        import ray
    except ImportError:
        return "127.0.0.1"

    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"


def new_group_id(generation: int) -> str:
    """A weight group id that holds a fresh 128-bit secret (and ends with ``-generation``)."""
    return f"rlhf-weights-{secrets.token_hex(16)}-{generation}"


def _listening_socket(host: str) -> socket.socket:
    """A TCP socket bound to ``host`` on a free port, listening (the store serves on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def _group(
    store: dist.Store,
    group_id: str,
    rank: int,
    world: int,
    backend: str,
    timeout_s: float,
    host: str,
):
    """A process group of ``world`` ranks over ``store`` alone (no default group involved);
    gloo's pairs of this rank listen on ``host``."""
    prefixed = dist.PrefixStore(f"{group_id}/", store)
    timeout = datetime.timedelta(seconds=timeout_s)
    if backend == "gloo":
        options = dist.ProcessGroupGloo._Options()
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
        options._timeout = timeout
        return dist.ProcessGroupGloo(prefixed, rank, world, options)
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
        host: the address to listen on (default: :func:`node_address`).
    """

    def __init__(self, backend: str, timeout_s: float = 600.0, host: str | None = None) -> None:
        self.backend, self.timeout_s = backend, timeout_s
        self.host = host or node_address()
        # Port 0: a free port of this address alone (the store would listen on every one).
        listener = _listening_socket(self.host)
        self.port = listener.getsockname()[1]
        try:
            self.store = dist.TCPStore(
                self.host,
                self.port,
                is_master=True,
                wait_for_workers=False,
                master_listen_fd=listener.fileno(),
                timeout=datetime.timedelta(seconds=timeout_s),
            )
        except BaseException:
            listener.close()
            raise
        listener.detach()  # the store owns the socket now and closes it when it stops
        self.group = None
        self.manifest: Manifest | None = None

    def join(self, group_id: str, world: int, manifest: Manifest) -> None:
        """Forms the group ``group_id`` (blocks until all ``world`` ranks joined)."""
        self.group = _group(self.store, group_id, 0, world, self.backend, self.timeout_s, self.host)
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
        timeout_s: float | None = None,
    ) -> None:
        """Joins group ``group_id`` as ``rank`` through rank 0's store at ``address``; waits
        ``timeout_s`` at most (None: the manifest's, the sender's timeout)."""
        host, port = address
        timeout_s = manifest.timeout_s if timeout_s is None else timeout_s
        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.TCPStore(host, port, is_master=False, timeout=timeout)
        self.group = _group(store, group_id, rank, world, backend, timeout_s, node_address())
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

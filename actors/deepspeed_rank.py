"""One data-parallel rank's DeepSpeed engine, and how training ranks are started.

Every training rank (``actors.rank.TrainerRank``: the policy for DPO or PPO, the PPO critic)
owns one ``DeepSpeedModel``: it joins the ranks' process group, wraps a Hugging Face model in a
DeepSpeed engine from the trainer settings, and gathers the full weights (ZeRO-3 included). It
needs no Ray: a test or a script builds one directly.

What listens: the ranks' process group (``join_ranks``) binds rank 0's store and every rank's
gloo pairs to the node's own address (127.0.0.1 in a local run), never every interface, and
keeps its keys under the group's secret (``Rendezvous``).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import socket
from collections.abc import Callable
from typing import Literal

import psutil
import torch
import torch.distributed as dist
from torch import Tensor

from actors.rendezvous import Rendezvous
from rlhf.models import lora
from rlhf.models.deepspeed_config import (
    DEFAULT_LOAD,
    ModelLoad,
    TrainerConfig,
    check_device,
    deepspeed_config,
    scheduler_start,
)
from rlhf.models.gc_pause import collections_paused
from rlhf.models.torch_extensions import (
    cache_cpu_info,
    extensions_dir,
    use_environment_ninja,
)

Device = Literal["cpu", "cuda"]


# On a CPU, torch's OpenMP threads wait this many spins for the next parallel region before
# they sleep (libgomp's default is 300,000). A train step is hundreds of short regions; inside a
# Ray worker the default let the threads fall asleep between them and a step took 10% longer
# (benchmarks/dpo_vs_trl.py). Still only milliseconds: an idle rank sleeps and frees its cores.
CPU_SPIN_COUNT = "1000000"


def trainer_env(device: Device) -> dict[str, str]:
    """Environment variables a trainer rank's process needs before it imports DeepSpeed
    (compiled ops go to this environment's own directory: ``rlhf.models.torch_extensions``)."""
    ops = {"TORCH_EXTENSIONS_DIR": extensions_dir()}
    if device != "cpu":
        return ops
    return {**ops, "DS_ACCELERATOR": "cpu", "GOMP_SPINCOUNT": CPU_SPIN_COUNT}


# How long a rank waits for the others to join (and a collective for the others), as DeepSpeed's
# own default.
JOIN_TIMEOUT = datetime.timedelta(minutes=30)


def join_ranks(
    rank: int,
    world_size: int,
    rendezvous: Rendezvous,
    backend: str,
    timeout: datetime.timedelta = JOIN_TIMEOUT,
) -> None:
    """Forms the default ``torch.distributed`` group of ``world_size`` ranks at ``rendezvous``.

    Rank 0 hosts the store on ``rendezvous.host:port`` (that address alone: torch's store
    would listen on every interface, so it gets a socket bound here); the others connect to it
    and wait for it up to ``timeout``. Every key lies under the rendezvous' secret. Gloo's
    pairs listen on the interface that holds ``rendezvous.host`` (``GLOO_SOCKET_IFNAME``,
    ``NCCL_SOCKET_IFNAME`` for NCCL's bootstrap), unless the user set those variables.
    """
    interface = interface_of(rendezvous.host)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
    os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)
    host, port = rendezvous.host, rendezvous.port
    if rank == 0:
        listener = _listen(host, port)
        try:
            store = dist.TCPStore(
                host,
                port,
                is_master=True,
                timeout=timeout,
                wait_for_workers=False,
                master_listen_fd=listener.fileno(),
            )
        except BaseException:
            listener.close()
            raise
        listener.detach()  # the store owns the socket now
    else:
        store = dist.TCPStore(host, port, is_master=False, timeout=timeout)
    dist.init_process_group(
        backend,
        store=dist.PrefixStore(f"{rendezvous.secret}/", store),
        rank=rank,
        world_size=world_size,
        timeout=timeout,
    )


def interface_of(address: str) -> str:
    """The name of this machine's network interface that holds ``address`` (e.g. "lo")."""
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == address for a in addresses):
            return name
    raise RuntimeError(
        f"no network interface of this machine has the address {address} that the ranks' "
        "rendezvous names (Ray's node address); start Ray with an address of this node"
    )


def _listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` alone, listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


class DeepSpeedModel:
    """A model wrapped by DeepSpeed on one rank of a group of ``world_size`` ranks.

    Args:
        rank, world_size, rendezvous: this rank, the group's size and where it meets
            (``Rendezvous``; see ``join_ranks``).
        model_path: the Hugging Face directory the model comes from (its tokenizer is copied
            into saved models).
        config: the trainer settings (ZeRO stage, optimizer, schedule, batch sizes).
        load_model: ``load_model(model_path, dtype=, trust_remote_code=, gradient_checkpointing=)``
            builds the module to train (e.g. ``rlhf.models.hf.load_causal_lm``); called with
            the config's settings after the process group exists and, under ZeRO-3, while
            DeepSpeed partitions loading.
        device: ``"cpu"`` (gloo) or ``"cuda"`` (nccl; the actor sees its one GPU as cuda:0).
        load: the job's seed, model dtype and remote-code setting (``ModelConfig.for_trainers``).
    """

    @collections_paused()  # DeepSpeed's import, the model's load and initialize: 25% less CPU
    def __init__(
        self,
        rank: int,
        world_size: int,
        rendezvous: Rendezvous,
        model_path: str,
        config: TrainerConfig,
        load_model: Callable[..., torch.nn.Module],
        device: Device = "cpu",
        load: ModelLoad = DEFAULT_LOAD,
    ) -> None:
        config.validate()
        check_device(config, device)
        if world_size != config.num_ranks:
            raise ValueError(
                f"world_size {world_size} differs from the config's num_ranks "
                f"{config.num_ranks}; start the ranks with an ActorGroup of num_ranks"
            )
        self.rank, self.world_size = rank, world_size
        self.model_path = str(model_path)
        self.config = config
        self.load = load
        # Each actor sees only its own device (Ray sets CUDA_VISIBLE_DEVICES), so LOCAL_RANK 0.
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0")
        for key, value in trainer_env(device).items():
            os.environ.setdefault(key, value)
        use_environment_ninja()  # the ninja make setup built the ops with
        cache_cpu_info(extensions_dir())  # DeepSpeed's op builders ask for it once per op
        import deepspeed

        self._deepspeed = deepspeed
        torch.manual_seed(load.seed)
        backend = "gloo" if device == "cpu" else "nccl"
        join_ranks(rank, world_size, rendezvous, backend)
        # DeepSpeed adopts the group formed above (it opens no rendezvous of its own).
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
        if device == "cuda":
            torch.cuda.set_device(0)
        ds_config = deepspeed_config(config, load)
        self.zero3 = config.zero_stage == 3
        if self.zero3:
            # Must be alive while the model loads: from_pretrained then partitions as it loads.
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds_config = HfDeepSpeedConfig(ds_config)
        model = load_model(
            self.model_path,
            dtype=load.train_dtype,
            trust_remote_code=load.trust_remote_code,
            gradient_checkpointing=config.gradient_checkpointing,
        )
        # With trainer.lora the base weights freeze and only the adapter reaches the optimizer.
        self.lora = config.lora if config.lora.enabled else None
        if self.lora is not None:
            model = lora.wrap(model, self.lora)
        self.engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=ds_config,
        )
        if self.engine.lr_scheduler is not None:
            self.engine.lr_scheduler.step(scheduler_start(config))
        self.device = self.engine.device

    # --- weights out ------------------------------------------------------------------------

    def full_state_dict(self) -> dict[str, Tensor] | None:
        """The whole model's weights (Hugging Face names) on rank 0's CPU; None on others.

        With a LoRA adapter: base + adapter merged (``rlhf.models.lora.merged_state_dict``).
        Under ZeRO-3 every rank takes part in gathering each parameter in turn.
        """
        state = self._gathered_state()
        if state is not None and self.lora is not None:
            return lora.merged_state_dict(self.engine.module, state)
        return state

    def adapter_state_dict(self) -> dict[str, Tensor] | None:
        """The LoRA adapter's tensors under PEFT's file names (``adapter_model.safetensors``)
        on rank 0's CPU; None on other ranks. Every rank must be called (ZeRO-3 gathers)."""
        if self.lora is None:
            raise RuntimeError("adapter_state_dict: this trainer has no adapter (trainer.lora.r 0)")
        state: dict[str, Tensor] = {}
        for name, param in self.engine.module.named_parameters():
            if not lora.is_adapter_parameter(name):
                continue
            with self._deepspeed.zero.GatheredParameters([param], enabled=self.zero3):
                if self.rank == 0:
                    state[name] = param.detach().to("cpu", copy=True)
        return lora.adapter_tensors(state) if self.rank == 0 else None

    def adapter_config(self) -> dict:
        """The adapter's ``adapter_config.json`` contents (any rank)."""
        return lora.adapter_config(self.engine.module, self.model_path)

    def _gathered_state(self) -> dict[str, Tensor] | None:
        """Every parameter and persistent buffer under the module's own names, on rank 0."""
        module = self.engine.module
        keep = set(module.state_dict().keys())
        state: dict[str, Tensor] = {}
        for name, param in module.named_parameters():
            with self._deepspeed.zero.GatheredParameters([param], enabled=self.zero3):
                if self.rank == 0:
                    state[name] = param.detach().to("cpu", copy=True)
        if self.rank == 0:
            for name, buffer in module.named_buffers():
                if name in keep:
                    state[name] = buffer.detach().to("cpu", copy=True)
        return state if self.rank == 0 else None

    def weights_digest(self) -> str:
        """SHA-256 of this rank's view of the full weights (equal on all ranks when in sync)."""
        digest = hashlib.sha256()
        for name, param in self.engine.module.named_parameters():
            with self._deepspeed.zero.GatheredParameters([param], enabled=self.zero3):
                data = param.detach().to("cpu").contiguous()
                digest.update(name.encode())
                digest.update(data.view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    # --- step bookkeeping -------------------------------------------------------------------

    def grad_norm(self) -> float:
        """DeepSpeed's global grad norm of the last step (NaN where it reports none, ZeRO-0)."""
        norm = self.engine.get_global_grad_norm()
        return float("nan") if norm is None else float(norm)

    def lr(self) -> float:
        """The learning rate the next ``engine.step()`` uses."""
        return float(self.engine.get_lr()[0])


def empty_pass(engine) -> Tensor:
    """A two-token forward with a zero loss, for a rank whose micro batch is empty.

    Every rank must run as many forward/backward passes as the others (ZeRO gathers and reduces
    inside them); this one changes nothing but keeps the rank in step.
    """
    ids = torch.zeros((1, 2), dtype=torch.long, device=engine.device)
    out = engine(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    return out.logits.sum() * 0.0


def node_id() -> str:
    """The Ray node the calling actor runs on."""
    import ray

    return ray.get_runtime_context().get_node_id()

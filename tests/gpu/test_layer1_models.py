"""Layer 1: model-level GPU paths without Ray or vLLM (torch, transformers, peft).

Prompt sharing through sdpa's CUDA kernels, LoRA's adapter on CUDA, and the weight broadcast's
flat buffers holding CUDA tensors (the NCCL broadcast itself needs two GPUs).
"""

from __future__ import annotations

import pytest
import torch

from rlhf.models.hf import batch_logps, load_causal_lm, shared_prompt_logps
from rlhf.models.weight_broadcast import manifest_of, pack, unpack
from tests.gpu.conftest import DEVICE, needs_cuda
from tests.gpu.test_layer1_trainer import BF16_BOUND, FP32_TOL, _on
from tests.models.tiny_llama import random_batch

pytestmark = [pytest.mark.gpu, needs_cuda]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_shared_prompt_logps_with_sdpa(dtype, tiny_llama_path, gpu_results) -> None:
    """One row per prompt with its responses after it (a boolean 4D mask into sdpa) scores
    each sequence as its own forward does; the backward through it is finite."""
    model = load_causal_lm(tiny_llama_path, dtype=dtype).to(DEVICE)
    assert model.config._attn_implementation == "sdpa"
    batch = _on(random_batch(6, num_responses=3, seed=31), DEVICE)
    with torch.no_grad():
        plain, _ = batch_logps(model, batch.input_ids, batch.attention_mask, batch.loss_mask)
    shared = shared_prompt_logps(model, batch.shared_prompt_rows())
    diff = float((shared.detach() - plain).abs().max())
    gpu_results[f"sdpa_shared_prompt/{dtype}/vs_per_sequence_max_abs"] = diff
    assert diff < (FP32_TOL if dtype == "float32" else BF16_BOUND), diff
    shared.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def _state(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A state dict on the device in two dtypes, with a tied (shared) weight."""
    gen = torch.Generator().manual_seed(0)
    embed = torch.randn(64, 16, generator=gen).to(DEVICE, dtype)
    return {
        "embed.weight": embed,
        "norm.weight": torch.randn(16, generator=gen).to(DEVICE, torch.float32),
        "proj.weight": torch.randn(16, 16, generator=gen).to(DEVICE, dtype)[:, :8],  # strided
        "lm_head.weight": embed,  # tied
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_broadcast_buffers_of_device_tensors(dtype) -> None:
    """pack/unpack round-trip tensors that live on the device (and CPU ones into device
    buffers, as a trainer's gathered state goes into NCCL's buffers), bit for bit."""
    state = _state(dtype)
    manifest = manifest_of(state.items())
    assert [s.name for s in manifest.slots] == ["embed.weight", "norm.weight", "proj.weight"]
    for source in (state, {name: t.cpu() for name, t in state.items()}):
        buffers = pack(source, manifest, DEVICE)
        assert all(b.device.type == DEVICE for b in buffers)
        assert all(b.view(torch.uint8).numel() == b.numel() * b.element_size() for b in buffers)
        out = dict(unpack(manifest, buffers))
        for name, tensor in out.items():
            assert tensor.device.type == DEVICE and tensor.dtype == state[name].dtype
            assert torch.equal(tensor, state[name]), name


def test_lora_adapter_on_the_device(tiny_llama_path, gpu_results) -> None:
    """rlhf.models.lora on CUDA: step 0 is the base model, only the adapter gets gradients,
    and the merged weights reproduce the adapted model."""
    lora = pytest.importorskip("rlhf.models.lora", reason="rlhf.models.lora is not in this tree")
    from rlhf.models.deepspeed_config import LoraSettings

    base = load_causal_lm(tiny_llama_path).to(DEVICE)
    batch = _on(random_batch(4, seed=32), DEVICE)

    def logps(model):
        return batch_logps(model, batch.input_ids, batch.attention_mask, batch.loss_mask)[0]

    with torch.no_grad():
        before = logps(base)
    model = lora.wrap(base, LoraSettings(r=8, alpha=16.0))
    with torch.no_grad():
        assert torch.equal(logps(model), before)  # B starts at zero
    logps(model).sum().backward()
    for name, param in model.named_parameters():
        assert (param.grad is not None) == lora.is_adapter_parameter(name), name
    trainable = [p for p in model.parameters() if p.requires_grad]
    torch.optim.AdamW(trainable, lr=1e-2).step()
    with torch.no_grad():
        after = logps(model)
    assert not torch.allclose(after, before)

    state = {name: t.detach() for name, t in model.state_dict().items()}
    plain = load_causal_lm(tiny_llama_path).to(DEVICE)
    plain.load_state_dict(lora.merged_state_dict(model, state))
    with torch.no_grad():
        diff = float((logps(plain) - after).abs().max())
    gpu_results["lora/adapter_merged_vs_peft_float32_max_abs"] = diff
    assert diff < FP32_TOL, diff


def _nccl_rank(rank: int, port_queue, result_queue) -> None:
    """One process of the two-GPU broadcast: rank 0 sends, rank 1 receives (see the test)."""
    from rlhf.models.weight_broadcast import WeightReceiver, WeightSender

    torch.cuda.set_device(rank)
    state = _state(torch.bfloat16)
    manifest = manifest_of(state.items())
    if rank == 0:
        sender = WeightSender("nccl", timeout_s=120, host="127.0.0.1")
        port_queue.put(sender.port)
        sender.join("rlhf-weights-test-0", 2, manifest)
        sender.send(state)
        return
    receiver = WeightReceiver()
    receiver.join(("127.0.0.1", port_queue.get()), "rlhf-weights-test-0", 1, 2, "nccl", manifest)
    received = dict(receiver.receive())
    result_queue.put(all(torch.equal(received[n], state[n].to(f"cuda:{rank}")) for n in received))


@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="the NCCL weight broadcast needs 2 GPUs (one per rank)"
)
def test_nccl_weight_broadcast_between_two_gpus() -> None:
    """WeightSender/WeightReceiver over NCCL: what the trainer's rank 0 sends arrives bit for
    bit on another GPU (the same code as the gloo broadcast the CPU suite runs)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    port_queue, result_queue = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_nccl_rank, args=(r, port_queue, result_queue)) for r in (0, 1)]
    for proc in procs:
        proc.start()
    try:
        assert result_queue.get(timeout=180) is True
    finally:
        for proc in procs:
            proc.join(timeout=60)
    assert [proc.exitcode for proc in procs] == [0, 0]

"""Layer 1: the trainer's DeepSpeed step on CUDA, without Ray or vLLM.

One ``TrainerRank`` (world size 1, built directly as a script on a GPU machine would) per case:
bf16 and fp32, ZeRO 0, 2 and 3, and LoRA. Each case compares the rank's log-probs with an fp32
Hugging Face forward on the same device, takes optimizer steps, and checks the full weights it
gathers and saves. bf16 differences are measured (``gpu_results``) and bounded loosely; the
measured numbers are what docs/platform.md quotes.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import importlib
import math
import time

import pytest
import torch

from rlhf.data.batch import PreferenceBatch
from rlhf.models.deepspeed_config import ModelLoad, PreferenceTrainerConfig
from rlhf.models.hf import batch_logps, load_causal_lm, shared_prompt_logps
from tests.gpu.conftest import DEVICE, free_port, needs_cuda, use_deepspeed_on
from tests.models.tiny_llama import random_batch

pytestmark = [pytest.mark.gpu, needs_cuda]

BETA = 0.1
PROMPTS = 4  # one micro batch of 4 prompts, 2 responses each
# Per-sequence summed log-probs (responses of 3-11 tokens): fp32 on the device against an fp32
# forward; bf16 against fp32 is the loose bound that catches a broken path (a wrong dtype or
# mask gives nats), the measured difference is recorded.
FP32_TOL = 1e-4
BF16_BOUND = 0.5


def _on(batch: PreferenceBatch, device: str) -> PreferenceBatch:
    """The batch with its tensors on ``device``."""
    moved = {
        f.name: getattr(batch, f.name).to(device)
        for f in dataclasses.fields(batch)
        if isinstance(getattr(batch, f.name), torch.Tensor)
    }
    return dataclasses.replace(batch, **moved)


def _plain_model(path, dtype: str = "float32") -> torch.nn.Module:
    """A whole Hugging Face model, also while a ZeRO-3 rank lives in this process.

    Transformers partitions every ``from_pretrained`` while a ZeRO-3 ``HfDeepSpeedConfig`` is
    alive (a process-wide hook), so a reference loaded next to a ZeRO-3 rank would be empty;
    the hook is set aside for this load.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        return load_causal_lm(path, dtype=dtype)
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def _hf_logps(model_or_path, batch: PreferenceBatch, dtype: str = "float32") -> torch.Tensor:
    """[N] summed response log-probs of a plain Hugging Face forward on ``DEVICE``."""
    model = model_or_path
    if not isinstance(model, torch.nn.Module):
        model = _plain_model(model_or_path, dtype)
    model = model.to(DEVICE).eval()
    on = _on(batch, DEVICE)
    with torch.no_grad():
        logps, _ = batch_logps(model, on.input_ids, on.attention_mask, on.loss_mask)
    return logps.float().cpu()


def _rank_logps(rank, batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """[N] the rank's log-probs per sequence, and the same through prompt sharing."""
    engine = rank.model.engine
    on = _on(batch, rank.model.device.type)
    engine.eval()
    try:
        with torch.no_grad():
            plain, _ = batch_logps(engine, on.input_ids, on.attention_mask, on.loss_mask)
            shared = shared_prompt_logps(engine, on.shared_prompt_rows())
    finally:
        engine.train()
    return plain.float().cpu(), shared.float().cpu()


@pytest.fixture
def build_rank(tiny_llama_path):
    """Builds one rank on ``DEVICE`` (a fresh process group each); frees it afterwards.

    Tears down what a rank leaves in the process, so the next case starts clean: the default
    process group, DeepSpeed's ZeRO-3 hook in Transformers and the device's cached memory.
    """
    from actors.deepspeed_rank import Rendezvous
    from actors.rank import RoleSetup, TrainerRank
    from actors.trainer import PreferenceStep

    use_deepspeed_on(DEVICE)
    built = []

    def build(dtype: str, zero_stage: int, **settings) -> TrainerRank:
        config = PreferenceTrainerConfig(
            zero_stage=zero_stage,
            lr=1e-3,
            micro_batch_prompts=PROMPTS,
            num_gpus_per_rank=1 if DEVICE == "cuda" else 0,
            **settings,
        )
        step = functools.partial(PreferenceStep, loss="sigmoid", beta=BETA)
        setup = RoleSetup(
            str(tiny_llama_path), config, load_causal_lm, step, DEVICE, ModelLoad(dtype=dtype)
        )
        rank = TrainerRank(0, 1, Rendezvous("127.0.0.1", free_port()), setup)
        built.append(rank)
        return rank

    yield build
    import torch.distributed as dist
    from deepspeed.utils import groups as deepspeed_groups
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    built.clear()
    gc.collect()
    unset_hf_deepspeed_config()
    if dist.is_initialized():
        dist.destroy_process_group()
    # DeepSpeed keeps the groups it made (its world group) in module globals; the next rank's
    # process group is a new one, so those start empty again.
    importlib.reload(deepspeed_groups)
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def _train(rank, batch: PreferenceBatch) -> dict:
    metrics = rank.train_step(batch, PROMPTS)
    return {"loss": metrics["sums"]["loss"] / PROMPTS, **metrics}


@pytest.mark.parametrize("zero_stage", [0, 2, 3])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_deepspeed_step_on_the_device(
    dtype, zero_stage, build_rank, tiny_llama_path, gpu_results, tmp_path
) -> None:
    """The rank's log-probs equal an fp32 HF forward (fp32) or lie within bf16's bound;
    it trains (loss falls), and its gathered and saved weights are the whole model."""
    case = f"{dtype}/zero{zero_stage}"
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rank = build_rank(dtype, zero_stage)
    assert rank.model.device.type == DEVICE
    assert rank.step.share_prompt, "sdpa takes the shared-prompt mask: sharing must stay on"

    batch = random_batch(PROMPTS, num_responses=2, seed=21)
    reference = _hf_logps(tiny_llama_path, batch)  # fp32, on the device
    plain, shared = _rank_logps(rank, batch)
    diff = float((plain - reference).abs().max())
    diff_shared = float((shared - reference).abs().max())
    gpu_results[f"trainer/{case}/logp_vs_fp32_hf_max_abs"] = diff
    gpu_results[f"trainer/{case}/shared_prompt_logp_vs_fp32_hf_max_abs"] = diff_shared
    bound = FP32_TOL if dtype == "float32" else BF16_BOUND
    assert diff < bound and diff_shared < bound, (diff, diff_shared)

    batch = dataclasses.replace(batch, ref_logps=reference)
    start = time.perf_counter()
    first = _train(rank, batch)
    gpu_results[f"trainer/{case}/step1_loss_minus_ln2"] = first["loss"] - math.log(2)
    if dtype == "float32":
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert math.isfinite(first["loss"])
    if zero_stage > 0:  # DeepSpeed reports no grad norm at ZeRO-0
        assert 0 < first["grad_norm"] < math.inf
    losses = [first["loss"]] + [_train(rank, batch)["loss"] for _ in range(9)]
    gpu_results[f"trainer/{case}/seconds_per_step"] = (time.perf_counter() - start) / 10
    gpu_results[f"trainer/{case}/loss_after_10_steps"] = losses[-1]
    assert losses[-1] < losses[0] - 0.1, losses

    original = _plain_model(tiny_llama_path).state_dict()
    state = rank.state_dict_for_sync()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in original.items()}
    assert all(t.device.type == "cpu" and torch.isfinite(t.float()).all() for t in state.values())
    assert {t.dtype for t in state.values()} == {getattr(torch, dtype)}
    assert not torch.equal(state["lm_head.weight"].float(), original["lm_head.weight"])

    rank.save_pretrained(str(tmp_path / "policy"))
    saved = _hf_logps(tmp_path / "policy", batch, dtype)
    now, _ = _rank_logps(rank, batch)
    reload_diff = float((saved - now).abs().max())
    gpu_results[f"trainer/{case}/saved_model_logp_vs_rank_max_abs"] = reload_diff
    assert reload_diff < bound, reload_diff
    if DEVICE == "cuda":
        gpu_results[f"trainer/{case}/peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20


@pytest.mark.parametrize(
    ("dtype", "zero_stage"), [("float32", 0), ("bfloat16", 2), ("bfloat16", 3)]
)
def test_lora_step_on_the_device(
    dtype, zero_stage, build_rank, tiny_llama_path, gpu_results, tmp_path
) -> None:
    """trainer.lora on the device: step 1 is ln 2 against the base model, only the adapter
    trains, the merged weights give the rank's log-probs, the saved adapter loads in PEFT."""
    lora = pytest.importorskip("rlhf.models.lora", reason="rlhf.models.lora is not in this tree")
    from rlhf.models.deepspeed_config import LoraSettings

    case = f"{dtype}/zero{zero_stage}"
    rank = build_rank(dtype, zero_stage, lora=LoraSettings(r=8, alpha=16.0))
    batch = random_batch(PROMPTS, num_responses=2, seed=22)
    base, _ = _rank_logps(rank, batch)  # the adapter's B starts at 0: the base model
    metrics = [_train(rank, dataclasses.replace(batch, ref_logps=base)) for _ in range(5)]
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert metrics[-1]["loss"] < metrics[0]["loss"]

    adapter = rank.model.adapter_state_dict()
    assert adapter and all(lora.is_adapter_parameter(name) for name in adapter)
    assert any(t.abs().max() > 0 for n, t in adapter.items() if ".lora_B." in n)
    merged = rank.state_dict_for_sync()
    original = _plain_model(tiny_llama_path, dtype).state_dict()
    assert merged.keys() == original.keys()
    changed = {n for n in merged if not torch.equal(merged[n], original[n])}
    adapted = {"q_proj", "k_proj", "v_proj", "o_proj"}  # Llama's default targets
    assert changed and all(n.rsplit(".", 2)[-2] in adapted for n in changed), changed
    assert torch.equal(merged["lm_head.weight"], original["lm_head.weight"])  # frozen base

    model = _plain_model(tiny_llama_path, dtype)
    model.load_state_dict(merged)
    now, _ = _rank_logps(rank, batch)
    merged_diff = float((_hf_logps(model, batch) - now).abs().max())
    gpu_results[f"lora/{case}/merged_logp_vs_rank_max_abs"] = merged_diff
    assert merged_diff < (FP32_TOL if dtype == "float32" else BF16_BOUND), merged_diff

    from peft import PeftModel

    rank.save_pretrained(str(tmp_path / "adapter"))
    loaded = PeftModel.from_pretrained(_plain_model(tiny_llama_path, dtype), tmp_path / "adapter")
    peft_diff = float((_hf_logps(loaded, batch) - now).abs().max())
    gpu_results[f"lora/{case}/saved_adapter_logp_vs_rank_max_abs"] = peft_diff
    assert peft_diff < (FP32_TOL if dtype == "float32" else BF16_BOUND), peft_diff

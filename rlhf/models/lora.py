"""LoRA adapters (PEFT) on a trainer's model: wrapping, the adapter's tensors, saving, merging.

With ``trainer.lora.r > 0`` a trainer rank wraps its Hugging Face model with ``wrap`` before
DeepSpeed sees it: the base weights are frozen and only the adapter's A and B matrices reach the
optimizer. What leaves the trainer is then either

- the adapter (``adapter_tensors`` and ``adapter_config``): the tensors under the names PEFT
  writes to ``adapter_model.safetensors`` (``base_model.model.<module>.lora_A.weight``) and the
  dict it writes to ``adapter_config.json``. ``save_adapter`` writes both, a directory that
  ``peft.PeftModel.from_pretrained`` and vLLM's ``LoRARequest`` load; or
- the merged weights (``merged_state_dict``): base + ``alpha / r * B @ A`` under the plain
  Hugging Face names, what an engine without the adapter serves.

Everything here works on tensors and modules of one process; gathering ZeRO-3 partitions is the
rank's job (``actors.deepspeed_rank.DeepSpeedModel``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlhf.config import ConfigError
from rlhf.models.deepspeed_config import LoraSettings

ADAPTER_NAME = "default"  # PEFT's name of the one adapter; its files leave it out
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."  # what PEFT puts before the wrapped model's own parameter names

# Module names of the attention projections, per family, in the order they are tried: the
# first set the model has all of is the default. GPT-2's c_proj also names its MLP's output
# projection, which PEFT then adapts too.
DEFAULT_TARGETS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj", "o_proj"),  # Llama, Qwen2, Mistral, Gemma, Phi-3 style
    ("q_proj", "k_proj", "v_proj", "out_proj"),  # OPT, BART style
    ("q_proj", "k_proj", "v_proj", "dense"),  # Phi
    ("c_attn", "c_proj"),  # GPT-2, StarCoder
    ("query_key_value", "dense"),  # GPT-NeoX, Falcon, BLOOM
    ("qkv_proj", "o_proj"),  # Phi-3 fused
    ("Wqkv", "out_proj"),  # MPT
)


def layer_names(model: torch.nn.Module) -> list[str]:
    """The distinct last names of the model's modules that LoRA can adapt (linear layers and
    GPT-2's Conv1D), sorted; the output head included."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if name and _adaptable(module)
    }
    return sorted(names)


def _adaptable(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def default_target_modules(model: torch.nn.Module) -> list[str]:
    """The architecture's attention projections: the first set of ``DEFAULT_TARGETS`` whose
    every name is a layer of ``model``. A ``ConfigError`` naming the model's layers when none
    fits (set ``trainer.lora.target_modules`` then)."""
    have = set(layer_names(model))
    for names in DEFAULT_TARGETS:
        if have.issuperset(names):
            return list(names)
    raise ConfigError(
        f"trainer.lora.target_modules: no default for {type(model).__name__}; name the modules "
        f"to adapt from its layers: {', '.join(sorted(have))}"
    )


def target_modules(model: torch.nn.Module, settings: LoraSettings) -> list[str]:
    """``settings.target_modules``, or the default, checked against the model's layers: a
    ``ConfigError`` names the missing modules and the ones the model has."""
    if settings.target_modules is None:
        return default_target_modules(model)
    have = layer_names(model)
    missing = [name for name in settings.target_modules if name not in have]
    if missing:
        raise ConfigError(
            f"trainer.lora.target_modules: {type(model).__name__} has no layer named "
            f"{', '.join(missing)}; its layers are named {', '.join(have)}"
        )
    return list(settings.target_modules)


def check_target_modules(
    model_path: str, settings: LoraSettings, trust_remote_code: bool = False
) -> list[str]:
    """``target_modules`` for the causal LM at ``model_path``, read from its config alone (the
    layers built on the meta device, no weights): the driver's check before any actor starts.
    A ``ConfigError`` as ``target_modules`` raises it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return target_modules(model, settings)


def peft_config(model: torch.nn.Module, settings: LoraSettings):
    """PEFT's ``LoraConfig`` for ``model`` (a causal LM) from ``trainer.lora``."""
    from peft import LoraConfig

    targets = target_modules(model, settings)
    conv1d = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if type(module).__name__ == "Conv1D"
    }
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        fan_in_fan_out=bool(conv1d & set(targets)),  # Conv1D stores weights as in x out
        bias="none",
        task_type="CAUSAL_LM",
    )


def wrap(model: torch.nn.Module, settings: LoraSettings) -> torch.nn.Module:
    """The model as a ``peft.PeftModel`` with a fresh adapter: base weights frozen, only the
    adapter trainable. At step 0 it computes exactly what ``model`` does (B starts at zero).
    The model keeps its train/eval mode."""
    from peft import get_peft_model

    training = model.training
    wrapped = get_peft_model(model, peft_config(model, settings))
    wrapped.train(training)
    return wrapped


def is_adapter_parameter(name: str) -> bool:
    """Whether a parameter of a wrapped model belongs to the adapter (its A and B matrices)."""
    return ".lora_" in name


def file_name(name: str) -> str:
    """A wrapped model's adapter parameter name as PEFT saves it: without the adapter's name
    (``...q_proj.lora_A.default.weight`` -> ``...q_proj.lora_A.weight``)."""
    return re.sub(rf"\.(lora_\w+)\.{ADAPTER_NAME}(?=\.|$)", r".\1", name)


def adapter_tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The adapter's tensors of a wrapped model's ``state`` (parameter name -> tensor), under
    the names of ``adapter_model.safetensors``, contiguous."""
    return {
        file_name(name): tensor.contiguous()
        for name, tensor in state.items()
        if is_adapter_parameter(name)
    }


def adapter_config(model: torch.nn.Module, base_model_path: str) -> dict[str, Any]:
    """The adapter's ``adapter_config.json`` as a dict of plain JSON values (what PEFT writes
    with the adapter; vLLM reads ``r``, ``lora_alpha`` and ``target_modules`` from it)."""
    config = model.peft_config[ADAPTER_NAME].to_dict()
    config["base_model_name_or_path"] = str(base_model_path)
    config["inference_mode"] = True
    plain = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    return json.loads(json.dumps(plain))  # enums (peft_type, task_type) to their strings


def save_adapter(directory: str | Path, tensors: dict[str, Tensor], config: dict[str, Any]) -> None:
    """Writes ``adapter_config.json`` and ``adapter_model.safetensors`` into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})


def merged_state_dict(model: torch.nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The full weights of base + adapter under the plain Hugging Face names.

    ``state``: the wrapped ``model``'s parameters and buffers by their wrapped names (gathered
    by the caller); ``model`` says which layers carry an adapter, with their scaling (alpha /
    r) and layout (GPT-2's Conv1D stores weights as in x out). Each adapted weight becomes
    ``W + scaling * B @ A`` (computed in float32, returned in W's dtype); the adapter's own
    tensors are left out.
    """
    from peft.tuners.lora import LoraLayer

    merged = {_plain_name(name): tensor for name, tensor in state.items()}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or ADAPTER_NAME not in module.lora_A:
            continue
        a = state[f"{name}.lora_A.{ADAPTER_NAME}.weight"].float()
        b = state[f"{name}.lora_B.{ADAPTER_NAME}.weight"].float()
        delta = (b @ a) * module.scaling[ADAPTER_NAME]
        if getattr(module, "fan_in_fan_out", False):
            delta = delta.T
        key = _plain_name(f"{name}.base_layer.weight")
        merged[key] = (merged[key].float() + delta).to(merged[key].dtype)
    return {name: tensor for name, tensor in merged.items() if not is_adapter_parameter(name)}


def _plain_name(name: str) -> str:
    """A wrapped model's parameter name as the unwrapped model has it."""
    return name.removeprefix(PREFIX).replace(".base_layer.", ".")


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside a ``PeftModel`` (``model`` itself when not wrapped)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model

"""Checks a driver runs before any work starts (model path, device) and as training goes (loss).

Each failure is one message that names the config key or the step and says what to do, so a
user's mistake costs seconds: these run before Ray or any engine starts.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from rlhf.config import ConfigError

# ``org/name`` (one slash, no leading ``.``, ``/`` or ``~``): the only form sent to the hub.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
HUB_LOOKUP_TIMEOUT_S = 10.0


class TrainingDivergedError(RuntimeError):
    """A step's loss is NaN or infinite; the run stops before anything is saved from it."""


def check_model_path(path: str, key: str = "model.path") -> str:
    """``path`` to load (``~`` expanded); a :class:`ConfigError` unless it is a causal LM's
    directory or a hub name.

    A local directory needs a ``config.json`` whose ``architectures`` (when given) name a
    causal LM. A string is looked up on the hub only when it has the form ``org/name`` and no
    such local path exists (so a mistyped ``output/sft`` fails at once when ``output/`` is
    here); with ``HF_HUB_OFFLINE`` set it must be in the local hub cache.
    """
    local = Path(path).expanduser()
    if local.exists():
        _check_model_directory(local, key)
        return str(local)
    first = Path(path).parts[0] if Path(path).parts else ""
    if not _HUB_ID.fullmatch(path) or Path(first).is_dir():
        raise ConfigError(
            f"{key}: {path} does not exist (relative paths start at {Path.cwd()}); "
            "give a model directory (one with config.json) or a hub name like org/name"
        )
    _check_hub_name(path, key)
    return path


def _check_model_directory(directory: Path, key: str) -> None:
    if not directory.is_dir():
        raise ConfigError(f"{key}: {directory} is a file; give the model's directory")
    if not any(directory.iterdir()):
        raise ConfigError(f"{key}: {directory} is an empty directory; no model was saved there")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ConfigError(
            f"{key}: {directory} has no config.json, so it is not a Hugging Face model "
            "directory (write one with model.save_pretrained and tokenizer.save_pretrained)"
        )
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{key}: {config_file} cannot be read: {error}") from None
    architectures = (config.get("architectures") or []) if isinstance(config, dict) else []
    if architectures and not any(_is_causal_lm(name) for name in architectures):
        raise ConfigError(
            f"{key}: {directory} holds a {', '.join(architectures)}, not a causal language "
            "model (...ForCausalLM); give the policy's directory (a reward classifier goes "
            "under reward:)"
        )


def _is_causal_lm(architecture: str) -> bool:
    """Whether a ``config.json`` architecture name is a causal LM class of Transformers."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    known = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    return architecture in known or architecture.endswith(("ForCausalLM", "LMHeadModel"))


def _check_hub_name(name: str, key: str) -> None:
    """A hub name must be in the local hub cache (offline) or known to the hub (online)."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(name, local_files_only=True)
        return
    except Exception:  # not cached: ask the hub, unless offline
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ConfigError(
            f"{key}: {name} is neither a local directory nor in the Hugging Face cache, and "
            "HF_HUB_OFFLINE is set; give a local model directory or download it first"
        )
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        HfApi().model_info(name, timeout=HUB_LOOKUP_TIMEOUT_S)
    except RepositoryNotFoundError:
        raise ConfigError(
            f"{key}: {name} is neither a local directory nor a model on the Hugging Face hub "
            "(or a private one: log in with `hf auth login`)"
        ) from None
    except Exception as error:  # no network, timeout, server error
        raise ConfigError(
            f"{key}: {name} is not a local directory, and the Hugging Face hub could not be "
            f"asked for it ({type(error).__name__}); give a local model directory"
        ) from None


def check_local_device(device: str, address: str | None) -> None:
    """Raises :class:`ConfigError` for ``device: cuda`` in a local run on a machine without a
    CUDA GPU (``address`` None: no cluster to join, whose nodes might have one)."""
    if device != "cuda" or address is not None:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            "device: cuda, but this machine has no CUDA GPU torch can use and ray.address is "
            "unset (a local run); set device: cpu, or ray.address to a cluster with GPUs"
        )


def check_finite_loss(metrics: dict[str, Any], step: int, first_row: str) -> None:
    """Raises :class:`TrainingDivergedError` when step ``step``'s loss is NaN or infinite.

    Call it on each step's metrics before anything is logged, checkpointed or saved from that
    step; ``first_row`` names the batch's first row (``source_of(table, indices[0])``).
    """
    for key, loss in metrics.items():  # "loss", or a role's "policy/policy_loss", ...
        if not key.endswith("loss") or not isinstance(loss, float) or math.isfinite(loss):
            continue
        raise TrainingDivergedError(
            f"step {step}: {key} is {loss}; the batch's first row is {first_row}. The run "
            "stopped before saving anything from this step: lower trainer.lr (or raise warmup), "
            "check that batch's rows, and --resume from the last checkpoint"
        )

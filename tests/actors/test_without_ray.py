"""A trainer rank and its steps import without Ray or vLLM (a plain class; the Ray actor is a
thin wrapper): what the GPU tier's first layer needs on a machine that has neither."""

from __future__ import annotations

import subprocess
import sys

# Imports the modules with ray and vllm made unimportable, and names the first one that fails.
_PROBE = """
import importlib, importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("ray", "vllm"):
            raise ImportError(f"{name} is blocked: this import must work without Ray and vLLM")
sys.meta_path.insert(0, Block())
for module in sys.argv[1:]:
    importlib.import_module(module)
print("imported", *sys.argv[1:])
"""

RAY_FREE = [
    "actors.deepspeed_rank",
    "actors.rank",
    "actors.trainer",
    "actors.ppo_policy",
    "actors.critic",
    "rlhf.models.hf",
    "rlhf.models.weight_broadcast",
]


def test_trainer_ranks_and_steps_import_without_ray_or_vllm() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *RAY_FREE], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["imported", *RAY_FREE]

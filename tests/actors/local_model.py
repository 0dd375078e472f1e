"""A stand-in for ``DeepSpeedModel`` in one process, so steps and ``TrainerRank`` run without
DeepSpeed or Ray.

``LocalEngine`` has the face of a DeepSpeed engine that the steps use: calling it runs the
module, ``backward`` accumulates the gradient, ``step`` keeps it (no update), so a test reads
the gradient of one train step. Data parallelism is emulated by one stand-in per rank, each with
its own copy of the weights: DeepSpeed's gradient is the mean of the ranks' gradients.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch


class LocalEngine:
    """Runs ``module`` like a DeepSpeed engine would, without updating it."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.device = torch.device("cpu")
        self.steps = 0

    def __call__(self, **inputs):
        return self.module(**inputs)

    def backward(self, loss: torch.Tensor, scale_wrt_gas: bool = True) -> None:
        loss.backward()

    def step(self) -> None:
        self.steps += 1

    def eval(self) -> None:
        self.module.eval()

    def train(self) -> None:
        self.module.train()


class LocalModel:
    """The attributes of ``DeepSpeedModel`` a step and ``TrainerRank``'s loops read."""

    def __init__(self, module: torch.nn.Module, rank: int, world_size: int, **config) -> None:
        self.engine = LocalEngine(copy.deepcopy(module))
        self.device = self.engine.device
        self.rank, self.world_size = rank, world_size
        self.config = SimpleNamespace(**config)

    def lr(self) -> float:
        return 1e-3

    def grad_norm(self) -> float:
        grads = [p.grad.norm() for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm())

    def grads(self) -> dict[str, torch.Tensor]:
        """The gradient the step left, by parameter name (zeros where none)."""
        return {
            name: torch.zeros_like(p) if p.grad is None else p.grad.clone()
            for name, p in self.engine.module.named_parameters()
        }


def data_parallel_grads(models: list[LocalModel]) -> dict[str, torch.Tensor]:
    """The gradient DeepSpeed applies after the ranks' backward passes: their mean."""
    per_rank = [m.grads() for m in models]
    return {name: torch.stack([g[name] for g in per_rank]).mean(0) for name in per_rank[0]}

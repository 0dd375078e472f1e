"""Engine start settings of rlhf.models.vllm_engine that need vLLM imported but no engine."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration  # imports vLLM (about 10 s of CPU when nothing else has)


def test_an_eager_cpu_engine_runs_vllms_compiled_helpers_without_compiling(monkeypatch):
    import torch._dynamo
    from torch._dynamo.utils import counters

    from rlhf.models.vllm_engine import run_compiled_helpers_eagerly

    monkeypatch.setattr(torch._dynamo.config, "disable", False)  # restored after the test
    run_compiled_helpers_eagerly()
    assert torch._dynamo.config.disable  # these machines are CPUs

    from vllm.v1.sample.ops.logprobs import batched_count_greater_than

    graphs = counters["stats"]["unique_graphs"]
    x = torch.tensor([[0.1, 0.5, 0.3], [0.9, 0.2, 0.4]])
    # Row 0: 0.5 and 0.3 are >= 0.3; row 1: 0.9 and 0.4 are >= 0.4.
    ranks = batched_count_greater_than(x, torch.tensor([[0.3], [0.4]]))
    assert ranks.tolist() == [2, 2]
    assert counters["stats"]["unique_graphs"] == graphs  # nothing traced or compiled

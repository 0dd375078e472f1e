"""RankedLogps and the import-time contract of the package."""

import subprocess
import sys

import pytest
import torch

from rlhf.algorithms import RankedLogps


def test_ranked_logps_validates_shapes():
    with pytest.raises(ValueError, match="K >= 2"):
        RankedLogps(torch.zeros(3), None, torch.zeros(3))
    with pytest.raises(ValueError, match="reference"):
        RankedLogps(torch.zeros(3, 2), torch.zeros(3, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="lengths"):
        RankedLogps(torch.zeros(3, 2), None, torch.zeros(3))


def test_from_pair_puts_chosen_first():
    logps = RankedLogps.from_pair(
        torch.tensor([1.0]),
        torch.tensor([2.0]),
        torch.tensor([3.0]),
        torch.tensor([4.0]),
        torch.tensor([5]),
        torch.tensor([6]),
    )
    assert logps.policy.tolist() == [[1.0, 2.0]] and logps.reference.tolist() == [[3.0, 4.0]]
    assert logps.lengths.tolist() == [[5, 6]] and logps.num_ranked == 2


def test_imports_torch_only():
    # The math must not pull in Ray, vLLM, DeepSpeed or transformers (README: algorithm library).
    code = (
        "import sys, rlhf.algorithms; "
        "heavy = {'ray', 'vllm', 'deepspeed', 'transformers', 'pyarrow'}; "
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

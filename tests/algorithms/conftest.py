import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _single_thread_torch():
    """The tensors here are tiny: one thread avoids OpenMP stalls on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

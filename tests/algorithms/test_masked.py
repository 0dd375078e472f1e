"""Masked reductions: masked positions never count, empty masks give 0, not NaN."""

import torch

from rlhf.algorithms import masked_mean, masked_var, masked_whiten


def test_masked_mean():
    x = torch.tensor([[1.0, 2.0, float("nan")], [3.0, float("inf"), 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert masked_mean(x, mask).item() == (1 + 2 + 3 + 5) / 4
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 4.0]))
    torch.testing.assert_close(masked_mean(x, mask, dim=0), torch.tensor([2.0, 2.0, 5.0]))


def test_masked_mean_of_nothing_is_zero_with_zero_gradient():
    x = torch.ones(2, 3, requires_grad=True)
    mean = masked_mean(x, torch.zeros(2, 3))
    assert mean.item() == 0.0
    mean.backward()
    assert torch.equal(x.grad, torch.zeros(2, 3))


def test_masked_var_and_whiten():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    valid = torch.tensor([1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(masked_var(x, mask), valid.var())
    torch.testing.assert_close(masked_var(x, mask, unbiased=False), valid.var(unbiased=False))
    whitened = masked_whiten(x, mask)
    torch.testing.assert_close(whitened[mask.bool()], (valid - 2.5) / valid.std())
    assert (whitened[~mask.bool()] == 0).all()
    kept_mean = masked_whiten(x, mask, shift_mean=False)
    torch.testing.assert_close(kept_mean[mask.bool()], (valid - 2.5) / valid.std() + 2.5)

"""sequence_logps against a naive loop; masking by position; entropy."""

import math

import pytest
import torch

from rlhf.algorithms import entropy_from_logits, sequence_logps, target_logps


def naive_logps(logits, labels, mask):
    """Per position t with mask 1: log softmax(logits[t - 1])[labels[t]]."""
    batch, length, _ = logits.shape
    token_logps = torch.zeros(batch, length, dtype=torch.float64)
    for b in range(batch):
        for t in range(1, length):
            if mask[b, t]:
                token_logps[b, t] = torch.log_softmax(logits[b, t - 1].double(), -1)[labels[b, t]]
    return token_logps.sum(1), token_logps


def test_matches_naive_loop():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.randint(11, (3, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 0]])
    logps, token_logps = sequence_logps(logits, labels, mask)
    expected_logps, expected_tokens = naive_logps(logits, labels, mask)
    torch.testing.assert_close(token_logps, expected_tokens.float())
    torch.testing.assert_close(logps, expected_logps.float())


def test_masks_by_position_keeping_an_eos_equal_to_pad():
    # pad id == eos id == 0: the real EOS at position 4 is scored, the padding after it is not.
    pad = eos = 0
    labels = torch.tensor([[5, 6, 7, 8, eos, pad, pad]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0]])  # response = 7, 8, EOS by position
    logits = torch.zeros(1, 7, 10)
    logits[0, 3, eos] = 2.0  # the model predicts EOS after token 8
    _, token_logps = sequence_logps(logits, labels, mask)
    eos_logp = 2.0 - math.log(math.exp(2.0) + 9)
    assert token_logps[0, 4].item() == pytest.approx(eos_logp)
    assert token_logps[0, 5].item() == 0.0 and token_logps[0, 6].item() == 0.0
    logps, _ = sequence_logps(logits, labels, mask)
    assert logps.item() == pytest.approx(2 * math.log(0.1) + eos_logp)


def test_masked_labels_may_hold_ignore_index():
    logits = torch.randn(1, 4, 5)
    labels = torch.tensor([[1, 2, 3, -100]])
    mask = torch.tensor([[0, 1, 1, 0]])
    _, token_logps = sequence_logps(logits, labels, mask)
    assert token_logps[0, 3] == 0


def test_half_precision_is_upcast_and_differentiable():
    torch.manual_seed(0)
    logits = (torch.randn(2, 5, 7) * 3).requires_grad_(True)
    labels = torch.randint(7, (2, 5))
    mask = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 1, 1, 0]])
    logps_bf16, tokens_bf16 = sequence_logps(logits.bfloat16(), labels, mask)
    assert tokens_bf16.dtype == torch.float32
    expected, _ = naive_logps(logits.bfloat16().float().detach(), labels, mask)
    torch.testing.assert_close(logps_bf16.detach(), expected.float())
    logps, _ = sequence_logps(logits, labels, mask)
    logps.sum().backward()
    assert logits.grad[:, -1].abs().sum() == 0  # the last logits predict nothing
    assert logits.grad[0, 0].abs().sum() > 0


def test_chunks_give_the_values_and_gradients_of_one_block(monkeypatch):
    from rlhf.algorithms import logprobs

    torch.manual_seed(1)
    logits = torch.randn(3, 7, 5, dtype=torch.float64).float().requires_grad_(True)
    labels = torch.randint(5, (3, 7))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1]])
    whole, _ = sequence_logps(logits, labels, mask)
    (grad_whole,) = torch.autograd.grad(whole.sum(), logits)
    monkeypatch.setattr(logprobs, "_CHUNK_ELEMENTS", 2 * 5)  # 2 response tokens per chunk
    chunked, token_logps = sequence_logps(logits, labels, mask)
    (grad_chunked,) = torch.autograd.grad(chunked.sum(), logits)
    expected, expected_tokens = naive_logps(logits.detach(), labels, mask)
    torch.testing.assert_close(chunked, expected.float())
    torch.testing.assert_close(token_logps, expected_tokens.float())
    torch.testing.assert_close(grad_chunked, grad_whole)
    # d/d logits of log softmax at the target: onehot - softmax, on scored positions only.
    t = 1  # sequence 1 scores positions 1 and 2, predicted by logits 0 and 1
    onehot = torch.nn.functional.one_hot(labels[1, t + 1], 5).float()
    torch.testing.assert_close(grad_chunked[1, t], onehot - torch.softmax(logits[1, t], -1))
    assert grad_chunked[1, 2:].abs().sum() == 0


def test_no_response_tokens_give_zeros():
    logits = torch.randn(2, 4, 3, requires_grad=True)
    logps, token_logps = sequence_logps(
        logits, torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4)
    )
    assert logps.tolist() == [0.0, 0.0] and token_logps.abs().sum() == 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="loss_mask"):
        sequence_logps(torch.zeros(1, 3, 4), torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3))
    with pytest.raises(ValueError, match="shape"):
        sequence_logps(torch.zeros(1, 3, 4), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2))


def test_target_logps_by_hand():
    # Row 0: softmax(0, ln 3) = (1/4, 3/4); row 1: three equal logits.
    logits = torch.tensor([[0.0, math.log(3.0), -math.inf], [2.0, 2.0, 2.0]])
    got = target_logps(logits, torch.tensor([1, 0]))
    torch.testing.assert_close(got, torch.tensor([math.log(0.75), -math.log(3.0)]))
    assert target_logps(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)).shape == (0,)
    with pytest.raises(ValueError, match=r"targets \[n\]"):
        target_logps(logits, torch.tensor([1]))


def test_entropy_from_logits():
    # uniform over 4: log 4; a one-hot-ish distribution: near 0
    assert entropy_from_logits(torch.zeros(4)).item() == pytest.approx(math.log(4))
    assert entropy_from_logits(torch.tensor([100.0, 0.0, 0.0])).item() == pytest.approx(0, abs=1e-6)
    probs = torch.tensor([0.5, 0.25, 0.25])
    expected = -(probs * probs.log()).sum()
    entropy = entropy_from_logits(probs.log()[None].bfloat16())  # bf16 input, float32 math
    assert entropy.dtype == torch.float32
    torch.testing.assert_close(entropy, expected[None], atol=1e-3, rtol=0)

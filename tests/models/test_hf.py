"""Loading and log-probs of Hugging Face models (no Ray, no DeepSpeed)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig

from rlhf.algorithms import RankedLogps, get_preference_loss
from rlhf.models.hf import (
    batch_logps,
    disable_dropout,
    hf_response_logps,
    hf_token_logprobs,
    load_causal_lm,
    load_reference_model,
    shared_prompt_blocker,
    shared_prompt_logps,
)
from rlhf.models.vllm_engine import EngineSettings

from .tiny_llama import build_tiny_llama, random_batch


def _naive_logp(model: torch.nn.Module, tokens: list[int], response_start: int) -> float:
    """log pi(response | prompt) of one unpadded sequence, token by token from log_softmax."""
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0]
    logp = torch.log_softmax(logits.double(), dim=-1)
    return sum(logp[t - 1, tokens[t]].item() for t in range(response_start, len(tokens)))


def _rows(batch) -> list[tuple[list[int], int]]:
    """Each row's real tokens and where its response starts."""
    rows = []
    for ids, attn, mask in zip(batch.input_ids, batch.attention_mask, batch.loss_mask, strict=True):
        length = int(attn.sum())
        rows.append((ids[:length].tolist(), int(mask.nonzero()[0])))
    return rows


def test_batch_logps_equals_per_sequence_computation(tiny_llama_path: Path) -> None:
    model = load_causal_lm(tiny_llama_path)
    batch = random_batch(4, num_responses=3, seed=1)
    logps, token_logps = batch_logps(model, batch.input_ids, batch.attention_mask, batch.loss_mask)
    expected = [_naive_logp(model, tokens, start) for tokens, start in _rows(batch)]
    assert logps.shape == (12,) and token_logps.shape == batch.input_ids.shape
    torch.testing.assert_close(
        logps.detach().double(), torch.tensor(expected, dtype=torch.float64), atol=1e-4, rtol=0
    )
    assert torch.all(token_logps[batch.loss_mask == 0] == 0)


class _NoLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward does not take ``logits_to_keep`` (older or remote code)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, input_ids, attention_mask, position_ids, use_cache):
        return self.inner(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
        )


def test_the_lm_head_skips_the_shared_prompt_positions(tiny_llama_path: Path) -> None:
    model = load_causal_lm(tiny_llama_path)
    batch = random_batch(4, num_responses=2, seed=5)
    first = int(batch.loss_mask.bool().any(0).nonzero()[0])  # earliest response position
    assert first > 2, "the test needs prompts longer than two tokens"
    seen = []
    hook = model.lm_head.register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[1]))
    try:
        logps, token_logps = batch_logps(
            model, batch.input_ids, batch.attention_mask, batch.loss_mask
        )
        full, full_tokens = batch_logps(
            _NoLogitsToKeep(model), batch.input_ids, batch.attention_mask, batch.loss_mask
        )
    finally:
        hook.remove()
    width = batch.input_ids.shape[1]
    assert seen == [width - (first - 1), width]  # positions first - 1 .. T - 1, then all
    assert token_logps.shape == full_tokens.shape == batch.input_ids.shape
    torch.testing.assert_close(token_logps, full_tokens, atol=1e-5, rtol=0)
    torch.testing.assert_close(logps, full, atol=1e-5, rtol=0)
    logps.sum().backward()  # gradients flow through the trimmed head
    assert model.lm_head.weight.grad is not None


@pytest.mark.parametrize(
    ("attention", "checkpointing"), [("sdpa", False), ("eager", False), ("sdpa", True)]
)
def test_shared_prompt_rows_give_the_per_sequence_logps_and_gradients(
    tiny_llama_path: Path, attention: str, checkpointing: bool
) -> None:
    model = load_causal_lm(tiny_llama_path, gradient_checkpointing=checkpointing)
    model.set_attn_implementation(attention)
    assert shared_prompt_blocker(model) is None
    batch = random_batch(5, num_responses=3, seed=8)

    def grads() -> list[torch.Tensor]:
        result = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        return result

    separate, _ = batch_logps(model, batch.input_ids, batch.attention_mask, batch.loss_mask)
    (separate * torch.arange(1.0, 16.0)).sum().backward()  # a distinct weight per sequence
    expected = grads()
    rows = batch.shared_prompt_rows()
    shared = shared_prompt_logps(model, rows)
    (shared * torch.arange(1.0, 16.0)).sum().backward()
    assert rows.input_ids.numel() < batch.input_ids.numel()  # each prompt ran once
    torch.testing.assert_close(shared, separate, atol=1e-5, rtol=0)
    for got, want in zip(grads(), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_shared_prompts_are_refused_where_a_custom_mask_would_be_wrong(tiny_llama_path: Path):
    model = load_causal_lm(tiny_llama_path)
    config = model.config
    config._attn_implementation = "flash_attention_2"  # not loadable on a CPU
    assert "'flash_attention_2' takes no 4D mask" in shared_prompt_blocker(model)
    config._attn_implementation = "sdpa"
    config.layer_types = ["full_attention", "sliding_attention"]  # e.g. Gemma's local layers
    assert "['sliding_attention'] would lose their window" in shared_prompt_blocker(model)
    config.layer_types = ["full_attention"] * 2
    config.sliding_window = 4096  # e.g. Mistral 7B v0.1
    assert "sliding_window 4096" in shared_prompt_blocker(model)
    config.use_sliding_window = False  # e.g. Qwen2: the window is configured but off
    assert shared_prompt_blocker(model) is None
    assert "_NoLogitsToKeep is not a Transformers class" in shared_prompt_blocker(
        _NoLogitsToKeep(model)  # stands for remote code
    )


def test_padding_does_not_change_a_sequence_logp(tiny_llama_path: Path) -> None:
    model = load_causal_lm(tiny_llama_path)
    batch = random_batch(3, seed=2)
    n, width = batch.input_ids.shape
    # 7 more padding columns filled with real-looking token ids (masked by position only).
    garbage = torch.randint(4, 64, (n, 7))
    padded_ids = torch.cat([batch.input_ids, garbage], dim=1)
    padded_ids[:, :width] = torch.where(
        batch.attention_mask.bool(), batch.input_ids, garbage[:, :1]
    )
    zeros = torch.zeros((n, 7), dtype=torch.long)
    with torch.no_grad():
        plain, _ = batch_logps(model, batch.input_ids, batch.attention_mask, batch.loss_mask)
        padded, _ = batch_logps(
            model,
            padded_ids,
            torch.cat([batch.attention_mask, zeros], dim=1),
            torch.cat([batch.loss_mask, zeros], dim=1),
        )
        alone = [
            batch_logps(
                model,
                batch.input_ids[i : i + 1, : int(batch.attention_mask[i].sum())],
                batch.attention_mask[i : i + 1, : int(batch.attention_mask[i].sum())],
                batch.loss_mask[i : i + 1, : int(batch.attention_mask[i].sum())],
            )[0]
            for i in range(n)
        ]
    torch.testing.assert_close(padded, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat(alone), plain, atol=1e-5, rtol=0)


def test_sigmoid_loss_is_ln2_when_policy_is_reference(tiny_llama_path: Path) -> None:
    policy = load_causal_lm(tiny_llama_path)  # train mode, dropout off
    reference = load_reference_model(EngineSettings(model=str(tiny_llama_path)))
    batch = random_batch(4, seed=3)
    with torch.no_grad():
        ref, _ = batch_logps(reference, batch.input_ids, batch.attention_mask, batch.loss_mask)
    logps, _ = batch_logps(policy, batch.input_ids, batch.attention_mask, batch.loss_mask)
    ranked = RankedLogps(
        policy=logps.view(-1, 2),
        reference=ref.view(-1, 2),
        lengths=batch.response_lengths.view(-1, 2),
    )
    losses = get_preference_loss("sigmoid")(ranked, 0.1)
    assert abs(losses.mean().item() - math.log(2)) < 1e-6
    losses.mean().backward()  # the policy side carries gradients
    assert policy.model.embed_tokens.weight.grad is not None


def test_hf_token_logprobs_contract(tiny_llama_path: Path) -> None:
    model = load_reference_model(EngineSettings(model=str(tiny_llama_path)))
    batch = random_batch(3, seed=4)
    rows = _rows(batch)
    per_token = hf_token_logprobs(model, [tokens for tokens, _ in rows], batch_size=4)
    for (tokens, start), values in zip(rows, per_token, strict=True):
        assert len(values) == len(tokens) - 1
        # values[t - 1] is token t: the response sum equals the naive computation.
        assert abs(sum(values[start - 1 :]) - _naive_logp(model, tokens, start)) < 1e-4
    assert not model.training


def test_hf_response_logps_sum_the_response_tokens_in_input_order(tiny_llama_path: Path) -> None:
    model = load_reference_model(EngineSettings(model=str(tiny_llama_path)))
    rows = _rows(random_batch(4, num_responses=2, seed=6))
    prompts = [tokens[:start] for tokens, start in rows]
    responses = [tokens[start:] for tokens, start in rows]
    sums = hf_response_logps(model, prompts, responses, batch_size=3)  # batches cut the order
    expected = [_naive_logp(model, tokens, start) for tokens, start in rows]
    assert sums == pytest.approx(expected, abs=1e-4)
    assert len({len(t) for t, _ in rows}) > 1  # lengths differ: sorting changed the batches
    assert not model.training


def test_hf_response_logps_share_runs_of_one_prompt_and_fall_back_for_empty_parts(
    tiny_llama_path: Path,
) -> None:
    model = load_reference_model(EngineSettings(model=str(tiny_llama_path)))
    rows = _rows(random_batch(6, num_responses=3, seed=7))
    prompts = [tokens[:start] for tokens, start in rows]
    responses = [tokens[start:] for tokens, start in rows]
    expected = [_naive_logp(model, tokens, start) for tokens, start in rows]
    # Runs of 3 responses per prompt, some cut by a batch of 4; then runs of 1, 2 and 3.
    for keep in (range(18), [0, 3, 4, 6, 7, 8, 12]):
        got = hf_response_logps(
            model, [prompts[i] for i in keep], [responses[i] for i in keep], batch_size=4
        )
        assert got == pytest.approx([expected[i] for i in keep], abs=1e-4)
    # An empty response scores 0 (each response then runs as its own sequence).
    got = hf_response_logps(model, prompts[:2] + [prompts[2]], responses[:2] + [[]], batch_size=4)
    assert got == pytest.approx(expected[:2] + [0.0], abs=1e-4)


def test_dropout_is_disabled_at_load(tmp_path: Path) -> None:
    config = LlamaConfig(attention_dropout=0.3)
    assert disable_dropout(config) == ["attention_dropout"]
    assert config.attention_dropout == 0.0

    path = build_tiny_llama(tmp_path)
    saved = LlamaConfig.from_pretrained(path)
    saved.attention_dropout = 0.5
    saved.save_pretrained(path)
    model = load_causal_lm(path)
    assert model.training and model.config.attention_dropout == 0.0
    batch = random_batch(2, seed=5)
    with torch.no_grad():
        first, _ = batch_logps(model, batch.input_ids, batch.attention_mask, batch.loss_mask)
        second, _ = batch_logps(model, batch.input_ids, batch.attention_mask, batch.loss_mask)
    assert torch.equal(first, second)


def test_hf_response_logps_at_the_context_length_are_float32_exact(tiny_llama_path: Path) -> None:
    """Responses filling the model's whole context (128 positions): each sum is within a few
    float32 rounding steps of a float64 forward. A float32 running sum drifted by about one ulp
    of the total per token (here 1e-4; 1.6e-3 for 256 tokens of the embedded model)."""
    model = load_reference_model(EngineSettings(model=str(tiny_llama_path)))
    exact_model = load_causal_lm(tiny_llama_path).eval().double()
    context = model.config.max_position_embeddings
    generator = torch.Generator().manual_seed(0)
    prompts, responses = [], []
    for _ in range(4):
        prompt = [1] + torch.randint(4, 64, (7,), generator=generator).tolist()
        for short in (0, 1):  # exactly the context, and one token less
            body = torch.randint(4, 64, (context - 9 - short,), generator=generator).tolist()
            prompts.append(prompt)
            responses.append(body + [2])
    assert max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True)) == context
    expected = [
        _naive_logp(exact_model, p + r, len(p)) for p, r in zip(prompts, responses, strict=True)
    ]
    assert min(expected) < -400  # float32's ulp there is 3e-5
    for batch_size in (8, 1):  # responses sharing a prompt row, and one sequence per pass
        got = hf_response_logps(model, prompts, responses, batch_size=batch_size)
        assert got == pytest.approx(expected, abs=5e-5)
    prompt_only = hf_response_logps(
        model, [[]] + prompts[1:2], [prompts[0] + responses[0]] + responses[1:2]
    )
    assert prompt_only[1] == pytest.approx(expected[1], abs=5e-5)  # the per-sequence path


def test_context_length_reads_the_models_positions(tiny_llama_path: Path, tmp_path: Path) -> None:
    from transformers import GPT2Config

    from rlhf.models.hf import context_length

    assert context_length(tiny_llama_path) == 128  # Llama: max_position_embeddings
    GPT2Config(n_positions=64, n_embd=32, n_layer=1, n_head=2).save_pretrained(tmp_path)
    assert context_length(tmp_path) == 64  # GPT-2: n_positions

"""The vLLM reference server gives the same log-probs as a Hugging Face forward pass."""

import pytest
import torch

pytestmark = pytest.mark.integration


def _hf_response_logps(model, prompt_ids, response_ids):
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logp = model(ids).logits.log_softmax(-1)[0]
    return sum(logp[t - 1, ids[0, t]].item() for t in range(len(prompt_ids), ids.shape[1]))


def test_vllm_reference_logps_equal_hf_forward(ray_cluster, reference_server, embedded_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.task import make_sft_corpus

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path)
    model = AutoModelForCausalLM.from_pretrained(embedded_model_path, dtype=torch.float32).eval()
    corpus = make_sft_corpus(24, seed=7)
    prompts = [tokenizer(p).input_ids for p, _ in corpus]
    responses = [
        tokenizer(f"{p} {c}").input_ids[len(q) :] + [tokenizer.eos_token_id]
        for (p, c), q in zip(corpus, prompts, strict=True)
    ]
    got = ray_cluster.get(reference_server.response_logps.remote(prompts, responses))
    expected = [_hf_response_logps(model, p, r) for p, r in zip(prompts, responses, strict=True)]
    diffs = [abs(a - b) for a, b in zip(got, expected, strict=True)]
    assert max(diffs) < 1e-4, diffs
    # The comparison is not vacuous: responses differ in log-prob by far more than the tolerance.
    assert max(expected) - min(expected) > 1.0

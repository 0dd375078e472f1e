"""An architecture vLLM cannot serve here falls back to the Hugging Face reference backend and
says why (the reference server runs in this process: no Ray, no engine starts)."""

from __future__ import annotations

import shutil

import pytest
import torch

from rlhf.models.hf import load_causal_lm
from rlhf.models.vllm_engine import EngineSettings

pytestmark = pytest.mark.integration  # imports vLLM (about 20 s on these machines)


def _with_gpt2_tokenizer(config, directory, gpt2_path):
    """Saves a random model of ``config`` with the tiny GPT-2's tokenizer files."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    for file in gpt2_path.iterdir():
        if file.name.startswith(("tokenizer", "chat_template")):
            shutil.copy(file, directory / file.name)
    return directory


def test_an_architecture_vllm_lacks_falls_back_to_hf_and_says_why(build_arch, tmp_path):
    from transformers import GPTNeoConfig

    from actors.reference import ReferenceServer

    gpt2 = build_arch("gpt2")
    config = GPTNeoConfig(
        vocab_size=600,
        hidden_size=128,
        num_layers=2,
        num_heads=2,
        attention_types=[[["global", "local"], 1]],
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=0,
    )
    path = _with_gpt2_tokenizer(config, tmp_path / "neo", gpt2)
    with pytest.warns(UserWarning, match=r"has no implementation of GPTNeoForCausalLM.*hf") as w:
        server = ReferenceServer(EngineSettings(model=str(path)))
    assert str(path) in str(w[0].message)
    assert server.backend_name() == "hf"
    prompts, responses = [[5, 6, 7], [5, 6, 7], [9]], [[8, 9, 0], [10, 0], [11, 12, 0]]
    got = server.response_logps(prompts, responses)
    model = load_causal_lm(path).eval()
    for p, r, value in zip(prompts, responses, got, strict=True):
        sequence = p + r
        with torch.no_grad():
            logp = model(torch.tensor([sequence])).logits[0].log_softmax(-1)
        want = sum(logp[t - 1, sequence[t]].item() for t in range(len(p), len(sequence)))
        assert value == pytest.approx(want, abs=1e-4)


def test_a_head_size_vllm_cpu_attention_rejects_is_named(build_arch, tmp_path):
    from transformers import LlamaConfig

    from rlhf.models.vllm_engine import unservable_reason

    config = LlamaConfig(
        vocab_size=600, hidden_size=64, num_attention_heads=4, num_hidden_layers=1,
        intermediate_size=128, max_position_embeddings=256,
    )  # fmt: skip
    path = _with_gpt2_tokenizer(config, tmp_path / "llama16", build_arch("gpt2"))
    reason = unservable_reason(EngineSettings(model=str(path)))
    assert reason is not None and "head sizes" in reason and "is 16" in reason
    assert unservable_reason(EngineSettings(model=str(build_arch("qwen2")))) is None

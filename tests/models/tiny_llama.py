"""A tiny random Llama with a word-level tokenizer, for the trainer and model tests.

hidden 128 and 2 heads give head_dim 64, which vLLM's CPU attention accepts; the weights are
random (seeded), so the tests check mechanics, not quality.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = [f"w{i}" for i in range(60)]
SPECIALS = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}


def build_tiny_llama(directory: Path, seed: int = 0) -> Path:
    """Writes a tiny Llama (safetensors, config, tokenizer) into ``directory``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {**SPECIALS, **{w: i + len(SPECIALS) for i, w in enumerate(WORDS)}}
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=128,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_hidden_layers=2,
        intermediate_size=256,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    tokenizer.save_pretrained(directory)
    return directory


def random_batch(
    num_prompts: int, num_responses: int = 2, seed: int = 0, prompt_len: int = 6, max_resp: int = 10
):
    """A right-padded PreferenceBatch of random token ids (ragged prompt and response lengths).

    Every sequence is BOS + prompt + response + EOS; the loss mask covers response and EOS.
    """
    from rlhf.data.batch import PreferenceBatch

    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(num_prompts):
        plen = int(torch.randint(2, prompt_len + 1, (1,), generator=gen))
        prompt = [1] + torch.randint(4, 64, (plen,), generator=gen).tolist()
        for _ in range(num_responses):
            rlen = int(torch.randint(2, max_resp + 1, (1,), generator=gen))
            response = torch.randint(4, 64, (rlen,), generator=gen).tolist() + [2]
            rows.append((prompt, response))
    width = max(len(p) + len(r) for p, r in rows)
    n = len(rows)
    input_ids = torch.zeros((n, width), dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    loss_mask = torch.zeros((n, width), dtype=torch.long)
    for i, (p, r) in enumerate(rows):
        input_ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attention_mask[i, : len(p) + len(r)] = 1
        loss_mask[i, len(p) : len(p) + len(r)] = 1
    return PreferenceBatch(input_ids, attention_mask, loss_mask, None, num_responses)

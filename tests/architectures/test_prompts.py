"""A user's chat prompts on every architecture's tokenizer: the text a sampler is given
tokenizes (special tokens added, as vLLM does with a string prompt) into exactly the chat
template's tokens, so a template that writes its own BOS does not get a second one."""

from __future__ import annotations

import json

from rlhf.data.prompts import PromptsConfig, open_prompts
from rlhf.models.tokenizer import load_tokenizer

MESSAGES = [
    [{"role": "user", "content": "how was the film ?"}],
    [
        {"role": "system", "content": "be brief ."},
        {"role": "user", "content": "i saw the film"},
        {"role": "assistant", "content": "and ?"},
        {"role": "user", "content": "it was long"},
    ],
]


def test_chat_prompts_tokenize_as_the_template_does(arch, tmp_path):
    _, path = arch
    tokenizer = load_tokenizer(path)
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": m}) + "\n" for m in MESSAGES))
    cfg = PromptsConfig(path=str(prompts_file), max_length=512)
    prompts = sorted(open_prompts(cfg, 0, tokenizer).first(2), key=lambda p: p.source_row)
    for prompt, messages in zip(prompts, MESSAGES, strict=True):
        expected = tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=False
        )
        assert prompt.given == messages
        assert prompt.ids == list(expected)
        assert tokenizer(prompt.text)["input_ids"] == prompt.ids  # what the sampler sees
        if tokenizer.bos_token_id is not None:
            assert prompt.ids.count(tokenizer.bos_token_id) <= 1

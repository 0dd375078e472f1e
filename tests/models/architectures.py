"""Tiny random-weight models of real Hugging Face architectures, built locally (no downloads).

Each architecture comes with a byte-level BPE tokenizer trained here with the ``tokenizers``
library on the embedded task's text, the special tokens and chat template of its family, and is
saved with ``save_pretrained`` like a hub checkpoint:

- ``gpt2``: learned absolute positions, tied embeddings, Conv1D layers, no pad token (the
  framework pads with EOS), no BOS;
- ``qwen2``: attention biases, tied embeddings, grouped-query attention, ChatML (EOS
  ``<|im_end|>``, pad ``<|endoftext|>``), no BOS;
- ``llama``: untied embeddings, Llama-3 style chat template, BOS added by the tokenizer, a pad
  token of its own;
- ``mistral``: untied, ``[INST]`` chat template, BOS added by the tokenizer, no pad token.

All have hidden size 128 and 2 heads (head_dim 64, which vLLM's CPU attention needs), 2 layers
and a vocabulary of about 600 tokens; weights are random (seeded), so tests check mechanics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

VOCAB_SIZE = 600  # the byte-level alphabet (256) and about 340 merges, plus special tokens
HIDDEN, HEADS, LAYERS, INTERMEDIATE, MAX_POSITIONS = 128, 2, 2, 256, 256

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }}"
    " [/INST]{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
PLAIN = (  # GPT-2 has no chat format of its own; fine-tunes add one like this
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@dataclass(frozen=True)
class Architecture:
    """How one architecture's tokenizer and config are made."""

    name: str
    specials: list[str]  # special tokens, in id order from 0
    eos: str
    chat_template: str
    bos: str | None = None
    add_bos: bool = False  # whether the tokenizer puts ``bos`` in front of every text
    pad: str | None = None  # None: the tokenizer has no pad token
    unk: str | None = None
    config: Callable[[dict[str, int | None]], object] = field(default=lambda ids: None)


def _gpt2_config(ids: dict[str, int | None]):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=ids["vocab"],
        n_positions=MAX_POSITIONS,
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        n_inner=INTERMEDIATE,
        bos_token_id=ids["eos"],
        eos_token_id=ids["eos"],
        # dropout stays at GPT-2's 0.1 (resid_pdrop, embd_pdrop, attn_pdrop): the framework
        # must switch it off itself, or DPO's step-0 loss is not ln 2.
    )


def _qwen2_config(ids: dict[str, int | None]):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=ids["vocab"],
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=1,  # grouped-query attention, as Qwen2 models have
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=None,
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )


def _llama_config(ids: dict[str, int | None]):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=ids["vocab"],
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        head_dim=HIDDEN // HEADS,
        max_position_embeddings=MAX_POSITIONS,
        rope_theta=500_000.0,
        tie_word_embeddings=False,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )


def _mistral_config(ids: dict[str, int | None]):
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=ids["vocab"],
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=1,
        head_dim=HIDDEN // HEADS,
        max_position_embeddings=MAX_POSITIONS,
        sliding_window=None,  # as Mistral 7B v0.2 and later
        tie_word_embeddings=False,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
    )


ARCHITECTURES = {
    a.name: a
    for a in (
        Architecture(
            "gpt2",
            ["<|endoftext|>"],
            bos="<|endoftext|>",  # named, as GPT-2's is, but never added to a text
            eos="<|endoftext|>",
            unk="<|endoftext|>",
            chat_template=PLAIN,
            config=_gpt2_config,
        ),
        Architecture(
            "qwen2",
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            eos="<|im_end|>",
            pad="<|endoftext|>",
            chat_template=CHATML,
            config=_qwen2_config,
        ),
        Architecture(
            "llama",
            ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"]
            + ["<|eot_id|>", "<|pad|>"],
            bos="<|begin_of_text|>",
            add_bos=True,
            eos="<|eot_id|>",
            pad="<|pad|>",
            chat_template=LLAMA3,
            config=_llama_config,
        ),
        Architecture(
            "mistral",
            ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
            bos="<s>",
            add_bos=True,
            eos="</s>",
            unk="<unk>",
            chat_template=MISTRAL,
            config=_mistral_config,
        ),
    )
}


def corpus() -> list[str]:
    """The text the tokenizers learn their merges from: the embedded task's reviews."""
    from rlhf.task import make_prompts, make_sft_corpus

    texts = [f"{prompt} {completion}" for prompt, completion in make_sft_corpus(3000, seed=1)]
    return texts + make_prompts(500, seed=1, split=None)


def build_tokenizer(arch: Architecture, texts: list[str]):
    """A byte-level BPE tokenizer trained on ``texts``, with the family's specials and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=arch.specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    if arch.add_bos:
        bos_id = backend.token_to_id(arch.bos)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{arch.bos} $A",
            pair=f"{arch.bos} $A {arch.bos} $B:1",
            special_tokens=[(arch.bos, bos_id)],
        )
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    named = {"bos_token": arch.bos, "eos_token": arch.eos, "pad_token": arch.pad}
    named["unk_token"] = arch.unk
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=MAX_POSITIONS,
        chat_template=arch.chat_template,
        extra_special_tokens=[t for t in arch.specials if t not in named.values()],
        **{k: v for k, v in named.items() if v is not None},
    )


def build_architecture(name: str, directory: Path, seed: int = 0) -> Path:
    """Writes the tiny ``name`` model (config, safetensors, tokenizer) into ``directory``."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    arch = ARCHITECTURES[name]
    tokenizer = build_tokenizer(arch, corpus())
    ids = {
        "vocab": len(tokenizer),
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
    }
    config = arch.config(ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"]
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_reward_model(name: str, directory: Path, seed: int = 1) -> Path:
    """A tiny sequence-classification reward model (``num_labels=1``) of architecture ``name``,
    with that architecture's own tokenizer and chat template."""
    from transformers import AutoModelForSequenceClassification

    arch = ARCHITECTURES[name]
    tokenizer = build_tokenizer(arch, corpus())
    ids = {
        "vocab": len(tokenizer),
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
    }
    config = arch.config(ids)
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory

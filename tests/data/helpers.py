"""The test tokenizer: word level, Metaspace splitting, <bos> prepended, ids fixed by hand."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "mat",
    "hi",
    "yes",
    "no",
    "user",
    "assistant",
    ":",
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "g",
    "good",
    "bad",
]
# ids: <pad> 0, <bos> 1, <eos> 2, <unk> 3, then the words in order from 4
V = {word: index for index, word in enumerate(SPECIALS + WORDS)}
PAD, BOS, EOS, UNK = 0, 1, 2, 3

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %} {{ m['role'] }} : {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} assistant :{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer: Metaspace splitting, <bos> prepended by its post-processor."""
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    vocab.update({"\u2581" + word: V[word] for word in WORDS})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", BOS)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )

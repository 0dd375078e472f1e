"""The embedded model's word-level tokenizer, built from the grammar's vocabulary.

One token per word, SentencePiece-style: a word is stored with the "▁" that stands for the space
before it ("▁good"), so text is cut at spaces and put back together by the Metaspace decoder,
including vLLM's incremental detokenizer (``tokenizers.decoders.DecodeStream``). Because every
word carries its own space, ``encode(prompt + " " + completion)`` starts with exactly the ids of
``encode(prompt)``: a completion's tokens are the same alone or after its prompt.

vLLM decodes a completion after its prompt, so its text keeps the space before the first
word (" was good ."); ``decode`` of the completion's ids alone gives "was good .".

Text is normalized first (lowercase, runs of whitespace to one space, punctuation split off), so
"The film was GOOD." encodes like "the film was good ." and decodes to the latter. Single
sequences get ``<bos>`` in front; ``<eos>`` is appended by the training and sampling code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from rlhf.task.grammar import vocabulary

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0, 1, 2, 3 in this order
SPACE = "▁"
MODEL_MAX_LENGTH = 256
PUNCTUATION = ".,!?;:"  # split off as words of their own: "good." -> "good ."


def build_raw_tokenizer(words: list[str] | None = None) -> Tokenizer:
    """The ``tokenizers.Tokenizer`` for ``words`` (default: the grammar's vocabulary)."""
    words = vocabulary() if words is None else words
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(SPACE + word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.Lowercase(),
            *(normalizers.Replace(mark, f" {mark} ") for mark in PUNCTUATION),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
        ]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=SPACE, prepend_scheme="always", split=True
    )
    tokenizer.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="always", split=True)
    bos_id = vocab[BOS]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B:1", special_tokens=[(BOS, bos_id)]
    )
    tokenizer.add_special_tokens(SPECIAL_TOKENS)  # already in the vocab: marks them special
    return tokenizer


def build_tokenizer(
    words: list[str] | None = None,
    padding_side: Literal["left", "right"] = "right",
    model_max_length: int = MODEL_MAX_LENGTH,
) -> PreTrainedTokenizerFast:
    """The Hugging Face fast tokenizer of the embedded model.

    ``<pad>`` is id 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3. ``padding_side`` is saved with
    the tokenizer; "right" suits training, generation with ``model.generate`` needs "left"
    (set ``tokenizer.padding_side`` where it is used).
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=build_raw_tokenizer(words),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side=padding_side,
        clean_up_tokenization_spaces=False,
    )

"""Every architecture's tokenizer through the data path and the Hugging Face log-probs (no Ray).

The pitfalls of ALGORITHMS.md hold for each: the response tokens of ``prompt + response`` are
the ones scored, whatever the tokenizer merges at the join, and an EOS that equals the pad token
is still scored at the end of a response. Shared-prompt log-probs equal per-sequence ones.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from rlhf.data import collate
from rlhf.data.batch import share_prompts
from rlhf.models.hf import batch_logps, load_causal_lm, shared_prompt_blocker, shared_prompt_logps
from rlhf.models.tokenizer import MissingTokenizerError, load_tokenizer

from .conftest import chat_records, text_records, tokenized


def _hand_logps(model, sequence: list[int], start: int) -> list[float]:
    """log p(token t | tokens < t) for t = start..L-1 of one unpadded sequence."""
    with torch.no_grad():
        logits = model(torch.tensor([sequence])).logits[0].double()
    logp = logits.log_softmax(-1)
    return [logp[t - 1, sequence[t]].item() for t in range(start, len(sequence))]


def test_pad_token_is_eos_only_where_the_tokenizer_has_none(arch):
    name, path = arch
    tokenizer = load_tokenizer(path)
    assert tokenizer.pad_token_id is not None and tokenizer.eos_token_id is not None
    has_pad = name in ("qwen2", "llama")  # GPT-2 and Mistral ship without a pad token
    assert (tokenizer.pad_token_id == tokenizer.eos_token_id) is not has_pad


@pytest.mark.parametrize("records", [text_records, chat_records], ids=["text", "chat"])
def test_response_tokens_are_the_scored_tokens(arch, records):
    """Each response's ids are the joint sequence's ids after the prompt, end with one EOS, and
    are exactly the positions the loss mask scores; decoding gives back the text."""
    _, path = arch
    tokenizer = load_tokenizer(path)
    rows = records()
    table, report = tokenized(tokenizer, rows)
    assert report.join_fallbacks == 0 and table.num_rows == len(rows)
    batch = collate(table, tokenizer.pad_token_id)
    eos = tokenizer.eos_token_id
    for i, row in enumerate(table.to_pylist()):
        record = rows[i]
        for j, response in enumerate(row["response_ids"]):
            sequence = row["prompt_ids"] + response
            n = 2 * i + j
            length = int(batch.attention_mask[n].sum())
            assert batch.input_ids[n, :length].tolist() == sequence
            scored = batch.input_ids[n][batch.loss_mask[n].bool()].tolist()
            assert scored == response and response[-1] == eos
            if not record.is_chat:  # plain text: the joint text's own tokens, EOS appended
                text = record.prompt + record.responses[j]
                joint = tokenizer(text)["input_ids"]
                assert sequence[:-1] == joint
                assert tokenizer.decode(sequence[:-1], skip_special_tokens=True) == text


def test_a_merge_at_the_join_keeps_the_prompt_and_scores_the_response_tokens(arch):
    """ "... and it wa" + "s good ." joins into "was": the prompt keeps its ids, the response is
    tokenized on its own, and those tokens (with EOS) are what the loss mask scores."""
    from rlhf.data.records import PreferenceRecord

    _, path = arch
    tokenizer = load_tokenizer(path)
    prompt, chosen, rejected = "i saw the film and it wa", "s good .", "s bad ."
    plain = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    joint = tokenizer(prompt + chosen, add_special_tokens=False)["input_ids"]
    assert joint[: len(plain)] != plain  # the byte-level BPE merges across the join
    record = PreferenceRecord(1, prompt, [chosen, rejected], ("chosen", "rejected"))
    table, report = tokenized(tokenizer, [record])
    assert report.join_fallbacks == 2
    (row,) = table.to_pylist()
    prefix = tokenizer(prompt)["input_ids"][: -len(plain)]  # BOS where the tokenizer adds one
    assert row["prompt_ids"] == prefix + plain
    own = tokenizer(chosen, add_special_tokens=False)["input_ids"]
    assert row["response_ids"][0] == own + [tokenizer.eos_token_id]
    batch = collate(table, tokenizer.pad_token_id)
    assert batch.input_ids[0][batch.loss_mask[0].bool()].tolist() == row["response_ids"][0]
    text = tokenizer.decode(row["prompt_ids"] + row["response_ids"][0], skip_special_tokens=True)
    assert text == prompt + chosen


def test_gpt2_eos_equal_to_pad_is_scored_at_the_end_of_a_response(build_arch):
    """GPT-2 pads with its EOS: the padding after a short response holds the EOS id too, yet
    the response's own EOS is scored and the padding is not."""
    path = build_arch("gpt2")
    tokenizer = load_tokenizer(path)
    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token_id == eos
    rows = text_records(3)
    table, _ = tokenized(tokenizer, rows)
    batch = collate(table, tokenizer.pad_token_id)
    model = load_causal_lm(path).eval()
    with torch.no_grad():
        logps, token_logps = batch_logps(
            model, batch.input_ids, batch.attention_mask, batch.loss_mask
        )
    lengths = batch.attention_mask.sum(1)
    assert (lengths < batch.input_ids.shape[1]).any()  # some rows are padded ...
    assert (batch.input_ids[batch.attention_mask == 0] == eos).all()  # ... with the EOS id
    for n in range(len(lengths)):
        length = int(lengths[n])
        sequence = batch.input_ids[n, :length].tolist()
        start = int(batch.loss_mask[n].nonzero()[0])
        hand = _hand_logps(model, sequence, start)
        assert sequence[-1] == eos and token_logps[n, length - 1] != 0  # the EOS is scored
        assert token_logps[n, length - 1].item() == pytest.approx(hand[-1], abs=1e-4)
        assert logps[n].item() == pytest.approx(sum(hand), abs=1e-4)
        assert (token_logps[n, length:] == 0).all()  # the padding is not


def test_shared_prompt_logps_equal_per_sequence(arch):
    """One row per prompt with its K responses gives the per-sequence log-probs (fp32)."""
    _, path = arch
    tokenizer = load_tokenizer(path)
    table, _ = tokenized(tokenizer, chat_records(4, k=3))
    batch = collate(table, tokenizer.pad_token_id)
    model = load_causal_lm(path).eval()
    assert shared_prompt_blocker(model) is None
    group = torch.arange(batch.num_prompts).repeat_interleave(batch.num_responses)
    with torch.no_grad():
        per_sequence, _ = batch_logps(model, batch.input_ids, batch.attention_mask, batch.loss_mask)
        shared = shared_prompt_logps(model, share_prompts(batch.input_ids, batch.loss_mask, group))
    torch.testing.assert_close(shared, per_sequence, atol=1e-4, rtol=0)


def test_a_model_directory_without_a_tokenizer_is_a_clear_error(build_arch, tmp_path):
    """GPT-2's config alone makes transformers build an empty tokenizer; Llama's fails
    obscurely: both become one message that names the directory and the fix."""
    for name in ("gpt2", "llama"):
        bare = tmp_path / name
        bare.mkdir()
        for file in ("config.json", "model.safetensors"):
            shutil.copy(build_arch(name) / file, bare / file)
        with pytest.raises(MissingTokenizerError, match=r"model\.path: .* tokenizer") as error:
            load_tokenizer(bare)
        assert str(bare) in str(error.value) and "save_pretrained" in str(error.value)

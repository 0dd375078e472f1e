"""A reward model of another architecture than the policy, with its own tokenizer and chat
template: the reward actor re-tokenizes the policy's text for it (no Ray: the actor's class runs
in this process)."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from actors.reward import RewardActor
from rlhf.config import ConfigError
from rlhf.models.tokenizer import MissingTokenizerError
from rlhf.rewards import RewardConfig, RewardModel


def _direct(path, ids: list[int]) -> float:
    """The reward model's own forward on one unpadded sequence."""
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, 0].item()


def test_reward_actor_scores_gpt2_text_with_a_qwen2_reward_model(build_arch, qwen2_reward_model):
    """The policy (GPT-2) samples text; the Qwen2 reward model tokenizes it with its own BPE,
    and chat prompts go through its ChatML template; scores equal its own forward, batched."""
    from rlhf.models.tokenizer import load_tokenizer

    policy = load_tokenizer(build_arch("gpt2"))
    rm = RewardModel(str(qwen2_reward_model), batch_size=3)
    assert rm.tokenizer.get_vocab() != policy.get_vocab()
    text = "i watched the new western and it"
    chat = [{"role": "user", "content": "how was the film ?"}]
    prompts = [text, chat]
    groups = [[" was great .", " was dull and slow ."], ["it was fun .", "it was bad ."]]
    actor = RewardActor(RewardConfig(kind="model", model=str(qwen2_reward_model), batch_size=3))
    got = actor.score_groups(prompts, groups)
    assert rm.token_ids(text, groups[0][0]) == rm.tokenizer(text + groups[0][0])["input_ids"]
    rendered = rm.tokenizer.decode(rm.token_ids(chat, groups[1][0]))
    assert rendered == (
        "<|im_start|>user\nhow was the film ?<|im_end|>\n"
        "<|im_start|>assistant\nit was fun .<|im_end|>\n"
    )
    want = [
        [_direct(qwen2_reward_model, rm.token_ids(p, r)) for r in g]
        for p, g in zip(prompts, groups, strict=True)
    ]
    assert [len(g) for g in got] == [2, 2]
    for got_group, want_group in zip(got, want, strict=True):
        assert got_group == pytest.approx(want_group, abs=1e-5)
    assert len({s for g in got for s in g}) == 4  # the texts get different scores


def test_eos_as_pad_does_not_hide_the_last_token(tmp_path):
    """A GPT-2 reward model pads with EOS; a text that ends with EOS is scored at that EOS."""
    from tests.models.architectures import build_reward_model

    path = build_reward_model("gpt2", tmp_path / "rm")
    rm = RewardModel(str(path))
    eos = rm.tokenizer.eos_token
    prompts, responses = ["the film was", "we saw it"], [" good ." + eos, " and left early ."]
    scores = rm(prompts, responses)
    ids = rm.token_ids(prompts[0], responses[0])
    assert ids[-1] == rm.tokenizer.eos_token_id == rm.tokenizer.pad_token_id
    assert scores[0] == pytest.approx(_direct(path, ids), abs=1e-5)
    assert scores[0] != pytest.approx(_direct(path, ids[:-1]), abs=1e-5)


def test_a_causal_lm_is_not_taken_for_a_reward_model(build_arch):
    with pytest.raises(ConfigError, match=r"reward\.model: .* is a GPT2LMHeadModel, not a seq"):
        RewardModel(str(build_arch("gpt2")))


def test_a_reward_model_without_a_tokenizer_is_a_clear_error(qwen2_reward_model, tmp_path):
    bare = tmp_path / "rm"
    bare.mkdir()
    for file in ("config.json", "model.safetensors"):
        shutil.copy(qwen2_reward_model / file, bare / file)
    with pytest.raises(MissingTokenizerError, match=r"reward\.model: .*save_pretrained"):
        RewardModel(str(bare))


def test_chat_prompts_need_a_chat_template(qwen2_reward_model, tmp_path):
    from transformers import AutoTokenizer

    copy = tmp_path / "rm"
    shutil.copytree(qwen2_reward_model, copy)
    (copy / "chat_template.jinja").unlink()
    assert not AutoTokenizer.from_pretrained(copy).chat_template
    rm = RewardModel(str(copy))
    with pytest.raises(ConfigError, match="no chat template"):
        rm([[{"role": "user", "content": "hi"}]], ["hello"])

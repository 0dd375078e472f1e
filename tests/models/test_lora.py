"""LoRA adapters on the tiny architectures: default targets, errors, the adapter's tensors and
files, merged weights, and prompt sharing through a wrapped model (no Ray, no DeepSpeed)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhf.config import ConfigError, from_dict
from rlhf.models import lora
from rlhf.models.deepspeed_config import LoraSettings, PreferenceTrainerConfig
from tests.models.architectures import ARCHITECTURES

IDS = {"vocab": 64, "bos": 1, "eos": 2, "pad": 0}


def tiny(name: str, seed: int = 0) -> torch.nn.Module:
    """The tiny random ``name`` causal LM of tests/models/architectures.py (64 tokens), built in
    memory, in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = ARCHITECTURES[name].config(IDS)
    config._attn_implementation = "eager"
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def trained(model: torch.nn.Module, settings: LoraSettings, seed: int = 1) -> torch.nn.Module:
    """``model`` wrapped, its adapter's B matrices set to random values (as after training)."""
    wrapped = lora.wrap(model, settings)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.05)
    return wrapped


@pytest.mark.parametrize(
    "name, expected",
    [
        ("llama", ["q_proj", "k_proj", "v_proj", "o_proj"]),
        ("qwen2", ["q_proj", "k_proj", "v_proj", "o_proj"]),
        ("mistral", ["q_proj", "k_proj", "v_proj", "o_proj"]),
        ("gpt2", ["c_attn", "c_proj"]),
    ],
)
def test_default_targets_are_the_attention_projections(name, expected):
    model = tiny(name)
    assert lora.default_target_modules(model) == expected
    wrapped = lora.wrap(model, LoraSettings(r=4))
    adapted = {n.rsplit(".", 1)[-1] for n, m in wrapped.named_modules() if hasattr(m, "lora_A")}
    assert adapted == set(expected)


def test_only_the_adapter_trains_and_step_zero_is_the_base_model():
    model = tiny("llama")
    ids = torch.tensor([[1, 5, 9, 13, 7]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    wrapped = lora.wrap(model, LoraSettings(r=4, alpha=8))
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    # 2 layers x 4 projections x (A, B)
    assert len(trainable) == 16 and all(lora.is_adapter_parameter(n) for n in trainable)
    q = wrapped.base_model.model.model.layers[0].self_attn.q_proj
    assert q.lora_A["default"].weight.shape == (4, 128) and q.scaling["default"] == 2.0
    with torch.no_grad():
        assert torch.equal(wrapped(input_ids=ids).logits, before)


def test_unknown_target_module_names_the_modules_the_model_has():
    with pytest.raises(ConfigError) as error:
        lora.wrap(tiny("gpt2"), LoraSettings(r=4, target_modules=["q_proj", "c_attn"]))
    message = str(error.value)
    assert "trainer.lora.target_modules" in message and "no layer named q_proj;" in message
    assert "c_attn, c_fc, c_proj, lm_head" in message


def test_the_driver_checks_target_modules_from_the_config_alone(tmp_path):
    tiny("gpt2").config.save_pretrained(tmp_path)  # no weights
    assert lora.check_target_modules(str(tmp_path), LoraSettings(r=4)) == ["c_attn", "c_proj"]
    with pytest.raises(ConfigError, match="GPT2LMHeadModel has no layer named o_proj"):
        lora.check_target_modules(str(tmp_path), LoraSettings(r=4, target_modules=["o_proj"]))


def test_a_model_without_known_projections_has_no_default():
    model = torch.nn.Sequential()
    model.add_module("up", torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="no default for Sequential.*layers: up"):
        lora.default_target_modules(model)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"r": -1}, "trainer.lora: r must be >= 0"),
        ({"r": 4, "alpha": float("inf")}, "trainer.lora.alpha: must be a finite number"),
        ({"r": 4, "dropout": float("nan")}, "trainer.lora.dropout: NaN|finite"),
        ({"r": 4, "dropout": 1.0}, r"dropout must lie in \[0, 1\)"),
        ({"r": 4, "alpha": 0}, "alpha must be > 0"),
        ({"r": 4, "target_modules": []}, "target_modules is empty"),
        ({"rank": 4}, "unknown key trainer.lora.rank"),
    ],
)
def test_bad_settings_are_config_errors(section, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(PreferenceTrainerConfig, {"lora": section}, "trainer")


def test_defaults_are_off():
    settings = from_dict(PreferenceTrainerConfig, {}, "trainer").lora
    assert settings == LoraSettings() and not settings.enabled and settings.r == 0


def test_adapter_tensors_have_peft_file_names():
    from peft import get_peft_model_state_dict

    wrapped = trained(tiny("qwen2"), LoraSettings(r=2))
    ours = lora.adapter_tensors(dict(wrapped.named_parameters()))
    peft_names = get_peft_model_state_dict(wrapped)
    assert sorted(ours) == sorted(peft_names)
    name = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    assert torch.equal(ours[name], peft_names[name])


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_merged_weights_equal_peft_merge(name):
    """Hand-checked on one weight, and against PEFT's own ``merge_and_unload`` on all of them
    (GPT-2's Conv1D keeps its weights transposed)."""
    settings = LoraSettings(r=2, alpha=6)
    wrapped = trained(tiny(name), settings)
    keep = wrapped.state_dict().keys()  # as the rank gathers: no non-persistent buffers
    state = {**dict(wrapped.named_parameters()), **dict(wrapped.named_buffers())}
    state = {k: v for k, v in state.items() if k in keep}
    merged = lora.merged_state_dict(wrapped, {k: v.detach().clone() for k, v in state.items()})
    layer = "model.layers.0.self_attn.q_proj" if name == "llama" else "transformer.h.0.attn.c_attn"
    wrapped_layer = f"base_model.model.{layer}"
    a = state[f"{wrapped_layer}.lora_A.default.weight"]
    b = state[f"{wrapped_layer}.lora_B.default.weight"]
    delta = 3.0 * b @ a  # alpha / r = 3
    expected = state[f"{wrapped_layer}.base_layer.weight"] + (delta.T if name == "gpt2" else delta)
    assert torch.allclose(merged[f"{layer}.weight"], expected, atol=1e-6)
    reference = wrapped.merge_and_unload().state_dict()
    assert all(not lora.is_adapter_parameter(k) for k in merged)
    assert set(merged) <= set(reference)
    for key, tensor in merged.items():
        assert torch.allclose(tensor, reference[key], atol=1e-6), key


def test_saved_adapter_loads_with_peft_and_gives_the_same_logits(tmp_path):
    from peft import PeftModel

    base_dir = tmp_path / "base"
    tiny("mistral").save_pretrained(base_dir)
    wrapped = trained(tiny("mistral"), LoraSettings(r=4, alpha=4, target_modules=["q_proj"]))
    config = lora.adapter_config(wrapped, str(base_dir))
    assert config["r"] == 4 and config["lora_alpha"] == 4 and config["target_modules"] == ["q_proj"]
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == str(base_dir)
    lora.save_adapter(
        tmp_path / "adapter", lora.adapter_tensors(dict(wrapped.named_parameters())), config
    )
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text()) == config
    ids = torch.tensor([[1, 4, 8, 15, 16, 23, 42]])
    with torch.no_grad():
        base = tiny("mistral")(input_ids=ids).logits
        loaded = PeftModel.from_pretrained(tiny("mistral"), tmp_path / "adapter").eval()
        logits = loaded(input_ids=ids).logits
        assert torch.allclose(logits, wrapped(input_ids=ids).logits, atol=1e-5)
        assert (logits - base).abs().max() > 1e-3  # the adapter did load


def test_prompt_sharing_runs_through_the_wrapped_model():
    """``shared_prompt_logps`` of a wrapped model equals its per-sequence log-probs (the prompt
    runs once for its two responses), and the LM head still skips the prompt positions."""
    from rlhf.data.batch import PreferenceBatch
    from rlhf.models.hf import batch_logps, shared_prompt_blocker, shared_prompt_logps

    wrapped = trained(tiny("llama"), LoraSettings(r=4))
    assert shared_prompt_blocker(wrapped) is None
    ids = torch.tensor([[1, 5, 9, 13, 7, 8, 2], [1, 5, 9, 13, 11, 2, 0]])
    attention = torch.tensor([[1] * 7, [1] * 6 + [0]])
    loss_mask = torch.tensor([[0] * 4 + [1] * 3, [0] * 4 + [1] * 2 + [0]])
    batch = PreferenceBatch(ids, attention, loss_mask, None, 2)
    shared = shared_prompt_logps(wrapped, batch.shared_prompt_rows())
    plain, _ = batch_logps(wrapped, ids, attention, loss_mask)
    assert torch.allclose(shared, plain, atol=1e-5)
    assert not math.isclose(float(shared[0]), 0.0)


def test_a_critic_with_an_adapter_is_a_config_error():
    from rlhf.driver.ppo import PPOConfig

    with pytest.raises(ConfigError, match="critic.lora.r is 4: the critic trains in full"):
        from_dict(PPOConfig, {"critic": {"lora": {"r": 4}}})
    assert from_dict(PPOConfig, {"trainer": {"lora": {"r": 4}}}).trainer.lora.r == 4

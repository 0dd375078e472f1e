"""The reference table cache follows the model's files: a model replaced in place is scored again."""

import json

import pytest
import torch

pytestmark = pytest.mark.integration


def _own_logps(model_dir, table) -> list[list[float]]:
    """Summed response log-probs of every row under the model now in ``model_dir`` (HF, fp32)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for prompt, responses in zip(
        table.column("prompt_ids").to_pylist(),
        table.column("response_ids").to_pylist(),
        strict=True,
    ):
        row = []
        for response in responses:
            ids = torch.tensor([prompt + response])
            with torch.no_grad():
                logp = model(ids).logits.log_softmax(-1)[0]
            row.append(sum(logp[t - 1, ids[0, t]].item() for t in range(len(prompt), ids.shape[1])))
        out.append(row)
    return out


def test_a_model_replaced_in_place_is_scored_again(ray_cluster, tmp_path):
    from rlhf.config import from_dict
    from rlhf.driver.common import ActorScope
    from rlhf.driver.dpo import DPOConfig
    from rlhf.driver.setup import add_reference_tables, read_preference_tables
    from tests.models.tiny_llama import build_tiny_llama

    model_dir = build_tiny_llama(tmp_path / "sft", seed=0)
    data = tmp_path / "prefs.jsonl"
    rows = [
        {"prompt": f"w{i} w{i + 1}", "chosen": f"w{i + 2} w7", "rejected": "w9"} for i in range(4)
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cfg = from_dict(
        DPOConfig,
        {
            "model": {"path": str(model_dir)},
            "data": {"path": str(data), "cache_dir": str(tmp_path / "cache")},
            "reference": {"backend": "hf"},
        },
    )

    def prepare():
        prepared, _ = read_preference_tables(cfg, str(model_dir))
        scope = ActorScope()
        try:
            train, _ = add_reference_tables(cfg, str(model_dir), prepared, scope)
        finally:
            scope.close()
        return prepared[0].cached, train

    cached, first = prepare()
    assert not cached
    cached, again = prepare()
    assert cached and again.equals(first)
    build_tiny_llama(model_dir, seed=1)  # "retrained" in place: same file names and sizes
    cached, second = prepare()
    assert not cached  # the reference pass ran again
    new, old = _flat(second.column("ref_logps")), _flat(first.column("ref_logps"))
    assert max(abs(a - b) for a, b in zip(new, old, strict=True)) > 0.1
    # The reference equals the new model's own log-probs, so DPO's first step is ln 2 again.
    expected = [value for row in _own_logps(model_dir, second) for value in row]
    assert max(abs(a - b) for a, b in zip(new, expected, strict=True)) < 1e-4


def _flat(column) -> list[float]:
    return [value for row in column.to_pylist() for value in row]

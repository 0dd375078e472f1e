"""make-data on a user's prompt file: sampled by the real vLLM sampler, scored, written, read back."""

import json

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.integration

PROMPTS = [
    "the film opens on a quiet street",
    "i watched this movie last night",
    "the story follows a young teacher",
    "this is a film about a family",
    "the director made a movie about a town",
]


def test_make_data_from_a_prompt_file(tmp_path, ray_cluster, embedded_model_path):
    from rlhf.config import from_dict
    from rlhf.data import read_preferences
    from rlhf.driver import make_data

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": p}) + "\n" for p in PROMPTS))
    cfg = from_dict(
        make_data.MakeDataConfig,
        {
            "output": str(tmp_path / "prefs.parquet"),
            "num_prompts": 100,  # more than the file holds: each training prompt once
            "strategy": "best_vs_worst",
            "prompts": {"path": str(prompts), "field": "text", "eval_size": 1},
            "model": {"path": embedded_model_path},
            "sampling": {"n": 4, "max_tokens": 12},
        },
    )
    rows = pq.read_table(make_data.run(cfg)).to_pylist()
    written = {row["prompt"] for row in rows}
    # 4 training prompts (one held out); a prompt whose 4 samples all tie writes no pair
    assert 2 <= len(written) <= 4 and written < set(PROMPTS)
    assert all(row["score_chosen"] > row["score_rejected"] for row in rows)
    records, report = read_preferences(cfg.output)  # offline DPO reads what make-data wrote
    assert report.rows_kept == len(rows) and {r.prompt for r in records} == written

"""The frontier example (examples/frontier): its config, and its measuring pipeline on two tiny
runs with a couple of checkpoints each, in this process (no Ray, vLLM or DeepSpeed)."""

import csv
import importlib
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "frontier"
SPEC = EXAMPLE / "frontier.yaml"
WHY = EXAMPLE / "why.yaml"  # the "why" experiments: more runs in the main sweep's output directory


@pytest.fixture
def frontier(monkeypatch):
    """examples/frontier/frontier.py as a module (it imports points.py beside it)."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    for name in ("frontier", "points"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield importlib.import_module("frontier")
    for name in ("frontier", "points"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("spec_file", [SPEC, WHY], ids=lambda p: p.name)
def test_every_frontier_run_is_a_valid_config_with_its_settings(
    tmp_path, monkeypatch, frontier, spec_file
):
    from rlhf.driver.loops import BUILTIN_LOOPS

    for name in BUILTIN_LOOPS:
        importlib.import_module(name)
    monkeypatch.chdir(REPO)  # the spec names configs relative to the project root
    spec = yaml.safe_load(spec_file.read_text())
    if spec_file == SPEC:
        paper = {"dpo", "ppo", "preferred_ft", "unlikelihood", "online_dpo", "pl_dpo"}
        assert paper <= set(spec["algorithms"])
    seen = set()
    for name, algo in spec["algorithms"].items():
        for label, overrides in frontier.settings_of(algo):
            loop, cfg = frontier.job(name, algo, label, overrides, spec, tmp_path)
            assert cfg.keep_checkpoints >= 100  # every checkpoint is kept: each is a point
            for override in overrides:
                key, value = override.split("=")
                *path, last = key.split(".")
                node = cfg
                for part in path:
                    node = getattr(node, part) if not isinstance(node, dict) else node[part]
                got = node[last] if isinstance(node, dict) else getattr(node, last)
                assert got == yaml.safe_load(value), (name, key)
            if algo.get("data"):
                assert Path(cfg.data.path).name == spec["data"][algo["data"]]["file"]
            seen.add(cfg.output_dir)
    assert len(seen) == sum(len(a["sweep"]) for a in spec["algorithms"].values())


def test_why_reuses_the_main_sweeps_data_and_runs_unchanged(tmp_path, monkeypatch, frontier):
    """why.yaml writes beside frontier.yaml's outputs without overwriting them, and a run the two
    share (same algorithm and setting: the same run directory) is the same training job."""
    from rlhf.driver.loops import BUILTIN_LOOPS

    for name in BUILTIN_LOOPS:
        importlib.import_module(name)
    monkeypatch.chdir(REPO)
    main, why = (yaml.safe_load(p.read_text()) for p in (SPEC, WHY))
    assert why["output_dir"] == main["output_dir"] and why["eval"] == main["eval"]
    assert why["report"] != "frontier"
    for key, data in why["data"].items():  # a file both name is made the same way
        if key in main["data"]:
            assert data == main["data"][key]
    shared = 0
    for name, algo in why["algorithms"].items():
        for label, overrides in frontier.settings_of(algo):
            if name not in main["algorithms"]:
                continue
            if label not in dict(frontier.settings_of(main["algorithms"][name])):
                continue
            mine = frontier.job(name, algo, label, overrides, why, tmp_path)[1]
            theirs = frontier.job(name, main["algorithms"][name], label, overrides, main, tmp_path)[
                1
            ]
            assert mine == theirs, (name, label)
            shared += 1
    assert shared >= 2  # the DPO and PPO runs the experiments compare against


def _tiny_reference(directory: Path):
    """A tiny random Llama with the embedded task's tokenizer (no SFT: fast to build)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf.task.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(model_max_length=128)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, tokenizer


def _tiny_run(run_dir: Path, reference, tokenizer, group: str, lr: float, steps: list[int]):
    """A run directory in the loops' layout: DeepSpeed's weights file of the trained group at
    each of ``steps``, after that many Adam steps of SFT toward one positive sentence."""
    model = type(reference)(reference.config)
    model.load_state_dict(reference.state_dict())
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    text = tokenizer("the movie was great and the actors were wonderful .")["input_ids"]
    ids = torch.tensor([text + [tokenizer.eos_token_id]])
    for step in range(1, max(steps) + 1):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        if step in steps:
            target = run_dir / "checkpoints" / f"step_{step:08d}" / group
            target.mkdir(parents=True)
            torch.save({"module": model.state_dict()}, target / "mp_rank_00_model_states.pt")
    (run_dir / "checkpoints" / "step_00000099.tmp" / group).mkdir(parents=True)  # unfinished


def test_pipeline_on_two_tiny_runs_writes_the_frontier(tmp_path, frontier):
    from rlhf.rewards import sentiment
    from rlhf.task import make_prompts

    reference_dir = tmp_path / "reference"
    reference, tokenizer = _tiny_reference(reference_dir)
    runs = {("dpo", "beta=0.1"): tmp_path / "a", ("ppo", "kl_coef=0.1"): tmp_path / "b"}
    _tiny_run(runs["dpo", "beta=0.1"], reference, tokenizer, "trainer", 3e-2, [1, 3])
    _tiny_run(runs["ppo", "kl_coef=0.1"], reference, tokenizer, "policy", 1e-2, [2, 4])
    points = sys.modules["points"]
    settings = points.EvalSettings(samples_per_prompt=4, max_tokens=12, batch_size=24, seed=0)
    prompts = make_prompts(6, seed=1, split="eval")

    rows = frontier.evaluate_runs(runs, reference_dir, tokenizer, prompts, sentiment, settings)
    frontier.report(rows, tmp_path)

    with (tmp_path / "frontier.csv").open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == (
            "algorithm", "setting", "step", "kl", "kl_stderr", "reward", "reward_stderr",
        )  # fmt: skip
        table = list(reader)
    assert [(r["algorithm"], int(r["step"])) for r in table] == [
        ("sft", 0), ("dpo", 1), ("dpo", 3), ("ppo", 2), ("ppo", 4),
    ]  # fmt: skip
    for r in table:
        kl, reward = float(r["kl"]), float(r["reward"])
        assert kl >= 0.0 and 0.0 <= reward <= 1.0  # the sentiment reward is P(positive)
        assert float(r["kl_stderr"]) >= 0.0 and 0.0 <= float(r["reward_stderr"]) <= 1.0
    assert float(table[0]["kl"]) == 0.0  # the reference against itself
    assert float(table[2]["kl"]) > float(table[1]["kl"]) > 0.01  # training moves away
    detail = sys.modules["points"].read_rows(tmp_path / "frontier_detail.csv")
    assert detail[0]["kl_k1"] == 0.0 and detail[0]["kl_k1_negative"] == 0.0
    assert all(r["kl_k1_p10"] <= r["kl_k1_p50"] <= r["kl_k1_p90"] for r in detail)
    assert (tmp_path / "frontier.png").stat().st_size > 10_000


def test_pipeline_names_a_run_without_checkpoints(tmp_path, frontier):
    points = sys.modules["points"]
    with pytest.raises(FileNotFoundError, match=r"empty_run.*keep_checkpoints"):
        points.evaluate_run(
            "dpo", "-", tmp_path / "empty_run", None, tmp_path, None, [], None, None
        )


def test_frontier_and_reward_at_kl_by_hand(frontier):
    points = sys.modules["points"]
    rows = [
        {"kl": kl, "reward": reward}
        for kl, reward in [(0.0, 0.5), (1.0, 0.4), (2.0, 0.7), (3.0, 0.6), (5.0, 0.9), (5.0, 0.8)]
    ]
    assert [(r["kl"], r["reward"]) for r in points.frontier(rows)] == [
        (0.0, 0.5), (2.0, 0.7), (5.0, 0.9),
    ]  # fmt: skip
    assert points.reward_at_kl(rows, 2.5) == 0.7
    assert points.reward_at_kl(rows, 10.0) == 0.9
    assert points.reward_at_kl(rows[1:], 0.5) is None
    table = frontier.table([{"algorithm": "dpo", **r} for r in rows])
    assert "| dpo | 0.700 | 0.900 | 0.900 | 6 |" in table


def test_prompt_stderr_averages_each_prompts_samples_first(frontier):
    points = sys.modules["points"]
    # prompt 0: samples 1, 3 (mean 2); prompt 1: 5, 7 (mean 6); stdev of (2, 6) = 2.828...,
    # over sqrt(2) prompts: 2.0
    assert points.prompt_stderr([1.0, 3.0, 5.0, 7.0], [0, 0, 1, 1]) == pytest.approx(2.0)
    assert math.isnan(points.prompt_stderr([1.0, 3.0], [0, 0]))


def test_support_best_of_n_and_coverage_by_hand(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.delitem(sys.modules, "support", raising=False)
    support = importlib.import_module("support")
    rewards = [[0.1, 0.5, 0.3], [0.4, 0.2, 0.9]]
    # best of 1: 0.1 and 0.4, mean 0.25; stdev 0.212..., over sqrt(2) prompts: 0.15
    assert support.best_of_n(rewards, 1) == pytest.approx((0.25, 0.15))
    # best of 2: 0.5 and 0.4, mean 0.45; stdev 0.0707..., over sqrt(2) prompts: 0.05
    assert support.best_of_n(rewards, 2) == pytest.approx((0.45, 0.05))
    assert support.best_of_n(rewards, 3)[0] == pytest.approx(0.7)
    assert support.best_of_n_kl(1) == 0.0
    assert support.best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)  # 0.636
    pairs = {
        "prompt": ["a", "a", "b"],
        "score_chosen": [0.9, 0.6, 0.5],
        "score_rejected": [0.6, 0.1, 0.2],
    }
    pq.write_table(pa.table(pairs), tmp_path / "pairs.parquet")
    found = support.coverage(tmp_path / "pairs.parquet")
    assert found["prompts"] == 2 and found["pairs"] == 3
    assert found["best_mean"] == pytest.approx(0.7)  # (0.9 + 0.5) / 2
    assert found["best>=0.85"] == 0.5 and found["best>=0.7"] == 0.5 and found["best>=0.95"] == 0
    sys.modules.pop("support", None)

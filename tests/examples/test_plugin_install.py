"""Plugins installed as packages of their own: listed, used by both jobs, refused when wrong.

Each package is installed into a temporary folder (``pip install --target``) that only the
``rlhf`` subprocesses of a test see; the shared environment never changes.
"""

import json
import math
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import yaml

from rlhf.run_dir import read_metrics
from rlhf.task import make_sft_corpus, sentiment_reward, sentiment_score
from tests.examples.conftest import REPO, pip_install, run_rlhf, write_package

DISTRIBUTION = "rlhf-example-plugin"
BETA, SFT_WEIGHT = 2.0, 0.5  # RRHF's hinge scale and SFT weight, as the jobs below set them


def rrhf(policy, lengths, beta=BETA, sft_weight=SFT_WEIGHT):
    """RRHF on pairs, written out independently of the plugin: [B, 2] -> [B]."""
    p = policy / lengths
    return beta * F.relu(p[:, 1] - p[:, 0]) - sft_weight * p[:, 0]


def brief_sentiment(prompts, responses):
    """The plugin's reward, written out independently: -0.02 per word beyond 16."""
    scores = sentiment_reward(prompts, responses)
    return [s - 0.02 * max(0, len(r.split()) - 16) for s, r in zip(scores, responses, strict=True)]


def test_rlhf_plugins_lists_both_entries_with_their_distribution(example_plugin):
    done = run_rlhf("plugins", plugins=example_plugin)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    rrhf_line = next(line for line in lines if line.split()[:1] == ["rrhf"])
    reward_line = next(line for line in lines if line.split()[:1] == ["brief_sentiment"])
    assert f"rlhf_example_plugin.rrhf:rrhf_loss (distribution '{DISTRIBUTION}')" in rrhf_line
    assert "rlhf_example_plugin.rewards:brief_sentiment" in reward_line
    assert DISTRIBUTION in reward_line
    # each under its registry's heading
    assert lines.index(rrhf_line) < next(i for i, x in enumerate(lines) if x.startswith("adv"))
    assert lines.index(reward_line) > next(i for i, x in enumerate(lines) if x.startswith("rew"))


# --- start-up errors: two plugins claiming one name, a wrong signature -------------------------

MARGIN_LOSS = """
from rlhf.algorithms import register_preference_loss


@register_preference_loss("margin")
def {function}(logps, beta):
    return -beta * (logps.policy[:, 0] - logps.policy[:, 1])
"""

WRONG_SIGNATURE = """
from rlhf.algorithms import register_preference_loss


@register_preference_loss("logit_margin")
def logit_margin(logits, beta):
    return logits
"""

COMMANDS = [("plugins",), ("train", "configs/dpo.yaml", "loss.name=sigmoid")]


def _at_once(calls):
    """Runs the zero-argument ``calls`` in threads at once (each waits on its own subprocess);
    returns their results in order. The subprocesses import torch and rlhf, seconds of CPU each,
    which one core at a time would spend one after the other."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return [future.result() for future in [pool.submit(call) for call in calls]]


@pytest.fixture(scope="module")
def broken_plugins(tmp_path_factory) -> dict[str, Path]:
    """Two installs, each in its own folder, built at once: "clash", two distributions that
    both register the preference loss 'margin'; "wrong_signature", one whose loss takes
    (logits, beta)."""
    root = tmp_path_factory.mktemp("broken")
    clash = [
        write_package(
            root / "clash" / dist, dist, module, MARGIN_LOSS.format(function=f"{module}_fn")
        )
        for dist, module in [("plugin-alpha", "alpha_losses"), ("plugin-beta", "beta_losses")]
    ]
    gamma = write_package(
        root / "wrong_signature" / "pkg", "plugin-gamma", "gamma_losses", WRONG_SIGNATURE
    )
    sites = _at_once(
        [
            lambda: pip_install(clash, root / "clash" / "site"),
            lambda: pip_install([gamma], root / "wrong_signature" / "site"),
        ]
    )
    return dict(zip(["clash", "wrong_signature"], sites, strict=True))


@pytest.fixture(scope="module")
def refused_starts(broken_plugins) -> dict[tuple[str, str], subprocess.CompletedProcess[str]]:
    """Each of COMMANDS with each broken install, the four started at once:
    {(install, command): what it printed and returned}."""
    runs = [(install, command) for install in broken_plugins for command in COMMANDS]
    done = _at_once([lambda i=i, c=c: run_rlhf(*c, plugins=broken_plugins[i]) for i, c in runs])
    return {
        (install, command[0]): result for (install, command), result in zip(runs, done, strict=True)
    }


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_two_plugins_claiming_one_name_stop_the_start_naming_both(refused_starts, command):
    done = refused_starts["clash", command[0]]
    assert done.returncode != 0
    assert f"rlhf {command[0]}: plugin error:" in done.stderr
    assert "preference_loss 'margin' is already registered" in done.stderr
    for dist, module in [("plugin-alpha", "alpha_losses"), ("plugin-beta", "beta_losses")]:
        assert f"{module}:{module}_fn (distribution '{dist}')" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_wrong_signature_stops_the_start_naming_function_and_signature(refused_starts, command):
    done = refused_starts["wrong_signature", command[0]]
    assert done.returncode != 0
    assert f"rlhf {command[0]}: plugin error:" in done.stderr
    assert "distribution 'plugin-gamma'" in done.stderr
    assert "gamma_losses:logit_margin(logits, beta) has the wrong signature" in done.stderr
    assert "expected fn(logps, beta, **options) -> Tensor [B]" in done.stderr
    assert "Traceback" not in done.stderr


# --- both jobs with the plugin's loss and reward, for real ---------------------------------------


def write_task_pairs(path, count, seed):
    """Pairs from the task's SFT corpus: two reviews that continue prompts ending with the same
    word, the more positive one chosen (ties skipped), as JSONL."""
    waiting, pairs = {}, []
    for prompt, completion in make_sft_corpus(20 * count, seed=seed):
        other = waiting.pop(prompt.split()[-1], None)
        if other is None:
            waiting[prompt.split()[-1]] = completion
            continue
        if sentiment_score(completion) != sentiment_score(other):
            ranked = sorted([completion, other], key=sentiment_score, reverse=True)
            pairs.append({"prompt": prompt, "chosen": ranked[0], "rejected": ranked[1]})
        if len(pairs) == count:
            break
    path.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    return path


@pytest.mark.integration
def test_offline_dpo_trains_with_the_plugin_loss_and_no_reference(
    example_plugin, ray_cluster, tmp_path, embedded_model_path
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.config import from_dict
    from rlhf.data.config import DataConfig
    from rlhf.data.loader import collate
    from rlhf.data.prepare import load_preferences
    from rlhf.models.hf import batch_logps

    train = write_task_pairs(tmp_path / "train.jsonl", 48, seed=1)
    held_out = write_task_pairs(tmp_path / "eval.jsonl", 16, seed=2)
    run_dir = tmp_path / "run"
    done = run_rlhf(
        "train",
        str(REPO / "configs" / "dpo.yaml"),
        f"output_dir={run_dir}",
        f"data.path={train}",
        f"data.eval_path={held_out}",
        "data.eval_fraction=0",
        f"data.cache_dir={tmp_path / 'tables'}",
        "loss.name=rrhf",
        f"loss.beta={BETA}",
        f"loss.options.sft_weight={SFT_WEIGHT}",
        "schedule.epochs=1",
        "trainer.warmup_steps=0",
        # One rank of 16 pairs a step rather than two of 8: one DeepSpeed process fewer to start.
        "trainer.num_ranks=1",
        "trainer.micro_batch_prompts=16",
        plugins=example_plugin,
        # The session's Ray: a local Ray of its own is seconds more of start-up.
        ray_address=ray_cluster.get_runtime_context().gcs_address,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    records = read_metrics(run_dir)
    steps = [r for r in records if "train/loss" in r]
    assert len(steps) == 3  # 48 pairs, 16 per step
    for r in steps:  # no reference: the implicit reward is beta * log pi itself
        assert r["train/rewards/chosen"] == pytest.approx(BETA * r["train/logps/chosen"])
        assert r["train/rewards/rejected"] == pytest.approx(BETA * r["train/logps/rejected"])

    # The last held-out loss is RRHF's on the saved model, computed here from scratch.
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path)
    data = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]
    table, _ = load_preferences(held_out, tokenizer, from_dict(DataConfig, data))
    batch = collate(table, tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model", dtype=torch.float32).eval()
    with torch.no_grad():
        logps, _ = batch_logps(model, batch.input_ids, batch.attention_mask, batch.loss_mask)
    expected = rrhf(logps.view(-1, 2), batch.response_lengths.view(-1, 2).float()).mean()
    final = [r for r in records if "eval/loss" in r][-1]
    assert final["eval/prompts"] == table.num_rows == 16
    assert final["eval/loss"] == pytest.approx(expected.item(), abs=1e-4)


@pytest.mark.integration
def test_online_dpo_uses_the_plugin_loss_and_reward(
    example_plugin, ray_cluster, tmp_path, embedded_model_path
):
    from rlhf.data.loader import collate

    run_dir = tmp_path / "run"
    done = run_rlhf(
        "train",
        str(REPO / "configs" / "online_dpo.yaml"),
        f"output_dir={run_dir}",
        "reward.function=brief_sentiment",
        "loss.name=rrhf",
        f"loss.beta={BETA}",
        f"loss.options.sft_weight={SFT_WEIGHT}",
        "rounds.rounds=1",
        "rounds.prompts_per_round=16",
        "rounds.eval_prompts=8",
        "rounds.epochs_per_round=1",
        "samplers.sampling.max_tokens=24",
        # One rank of 16 prompts a step rather than two of 8: one DeepSpeed process fewer.
        "trainer.num_ranks=1",
        "trainer.micro_batch_prompts=16",
        "trainer.warmup_steps=0",
        # The Hugging Face reference: one vLLM engine (the sampler's) starts instead of two.
        "reference.backend=hf",
        plugins=example_plugin,
        ray_address=ray_cluster.get_runtime_context().gcs_address,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    rounds = [r for r in read_metrics(run_dir) if "eval/reward/mean" in r]
    assert [r["round"] for r in rounds] == [0]

    # Every sample (the round's training and held-out prompts) was scored by the plugin's
    # reward, which is not the plain sentiment.
    samples = pq.read_table(run_dir / "rounds" / "round_0000" / "samples.parquet")
    prompts, responses = samples["prompt"].to_pylist(), samples["response"].to_pylist()
    scores = samples["score"].to_pylist()
    assert set(samples["split"].to_pylist()) == {"train", "eval"}
    assert scores == pytest.approx(brief_sentiment(prompts, responses), abs=1e-9)
    assert scores != pytest.approx(sentiment_reward(prompts, responses), abs=1e-3)

    # The first step (policy == reference) takes RRHF's loss over all of round 0's pairs: one
    # step holds them all (16 prompts at most). Sigmoid DPO would give exactly ln 2.
    prefs = pq.read_table(run_dir / "rounds" / "round_0000" / "preferences.parquet")
    batch = collate(prefs, pad_token_id=0)
    expected = rrhf(
        batch.ref_logps.view(-1, 2).double(), batch.response_lengths.view(-1, 2).double()
    ).mean()
    first = next(r for r in read_metrics(run_dir) if "train/loss" in r)
    assert first["step"] == 1 and first["train/prompts"] == prefs.num_rows
    assert first["train/loss"] == pytest.approx(expected.item(), abs=1e-4)
    assert abs(first["train/loss"] - math.log(2)) > 0.02

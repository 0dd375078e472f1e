"""Online DPO with real samplers (vLLM), reference (vLLM) and trainers (DeepSpeed)."""

import math
import time

import pyarrow.parquet as pq
import pytest

from rlhf.config import from_dict
from rlhf.run_dir import Checkpoints, read_metrics

# A job's reward actor imports this module (_fails_in_round_5): keep its imports light (torch,
# e.g. through tests.driver.conftest's helpers, would add 2.8 CPU-s to the actor's start).

pytestmark = pytest.mark.integration


def online_config(out_dir, model_path, **sections):
    from rlhf.driver.online_dpo import OnlineDPOConfig

    data = {
        "output_dir": str(out_dir),
        "model": {"path": model_path},
        "loss": {"name": "sigmoid", "beta": 0.1},
        "samplers": {"sampling": {"n": 4, "max_tokens": 40}},
        "rounds": {
            "rounds": 3,
            "prompts_per_round": 48,
            "epochs_per_round": 2,
            "eval_prompts": 48,
            "strategy": "best_vs_worst",
        },
        "trainer": {"num_ranks": 2, "zero_stage": 2, "micro_batch_prompts": 8, "lr": 5e-4},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value) if isinstance(value, dict) else data.update(
            {key: value}
        )
    return from_dict(OnlineDPOConfig, data)


def _rounds(run_dir):
    return [r for r in read_metrics(run_dir) if "eval/reward/mean" in r]


def test_online_dpo_pairs_raises_reward(ray_cluster, tmp_path, embedded_model_path, capfd):
    from rlhf.driver import online_dpo

    run_dir = online_dpo.run(online_config(tmp_path / "run", embedded_model_path))
    # A quiet console: vLLM's engine log is in the sampler's file under logs/, not on it.
    console = "".join(capfd.readouterr())
    sampler_logs = "".join(f.read_text() for f in (run_dir / "logs").glob("Sampler-*.log"))
    # The engine's own start-up output (its log records depend on vLLM's logging settings in
    # a worker that may have imported vLLM before; its weight loading always prints).
    assert "Loading safetensors checkpoint shards" in sampler_logs
    assert "Loading safetensors checkpoint shards" not in console
    assert "Initializing a V1 LLM engine" not in console and " INFO " not in console
    rounds = _rounds(run_dir)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    sft, last = rounds[0]["eval/reward/mean"], rounds[-1]["eval/reward/mean"]
    assert last > sft + 0.05, [r["eval/reward/mean"] for r in rounds]
    assert all(math.isfinite(r["eval/kl"]) for r in rounds)
    assert abs(rounds[0]["eval/kl"]) < 0.05  # round 0 samples the SFT model == the reference
    for phase in ("generate", "score", "reference", "mismatch_kl", "train", "sync", "sync_probe"):
        assert rounds[-1][f"time/{phase}"] > 0
    for r in rounds:  # every sync landed (the probe), and samplers and trainer agree in fp32
        assert 0 <= r["sync/logp_max_abs_diff"] < 1e-4, r["round"]
        assert 0 <= r["rollout/mismatch_kl"] < 1e-6, r["round"]
    samples = pq.read_table(run_dir / "rounds" / "round_0001" / "samples.parquet")
    assert samples.num_rows == (48 + 48) * 4
    prefs = pq.read_table(run_dir / "rounds" / "round_0001" / "preferences.parquet")
    assert prefs.num_rows == rounds[1]["preferences"] > 0
    assert (run_dir / "rounds.png").stat().st_size > 1000
    # The final weights (version 3, one update past round 2's samples) on the held-out prompts.
    final = read_metrics(run_dir)[-1]
    assert final["final/policy_version"] == 3 and "round" not in final
    assert final["final/reward/mean"] > sft + 0.05 and final["final/kl"] > 0
    assert final["step"] == rounds[-1]["step"]


CALLS = {"n": 0}  # per process: the job's reward actor counts its own calls


def _fails_in_round_5(prompts, responses):
    """The task's reward in rounds 0-4 (one call per round); then breaks the way a remote judge
    does."""
    CALLS["n"] += 1
    if CALLS["n"] > 5:
        raise RuntimeError("judge unavailable")
    from rlhf.task import sentiment_reward

    return sentiment_reward(prompts, responses)


def test_online_dpo_plackett_luce_rankings_raise_reward_until_the_reward_fails(
    ray_cluster, tmp_path, embedded_model_path
):
    """Plackett-Luce on full rankings of K = 4 raises the reward over rounds 0-4. Round 5's
    reward call then raises: the error names the reward function, the rounds before it are
    kept (samples, metrics, a checkpoint) and the job's actors end, so a shared cluster gets
    its resources back.

    The run syncs by the object store (the pairs run and tests/driver/test_weight_sync.py by
    the broadcast): after every sync the sampler's vLLM log-probs equal the trainer's within
    1e-4 (the round's sync probe); before it they differ, by as much as a round's training
    moved the policy (far from the SFT model by round 2: its held-out KL)."""
    from rlhf.driver import online_dpo

    cfg = online_config(
        tmp_path / "run",
        embedded_model_path,
        loss={"name": "plackett_luce"},
        reward={"function": "tests.driver.test_online_dpo:_fails_in_round_5"},
        rounds={"strategy": "ranking", "rounds": 6, "eval_every": 2},
        samplers={"sync": "object_store"},  # the same run by the object store (others: broadcast)
    )
    free = ray_cluster.available_resources().get("CPU", 0)  # session fixtures may hold some
    with pytest.raises(RuntimeError, match="the reward function raised RuntimeError: judge"):
        online_dpo.run(cfg)
    run_dir = tmp_path / "run"
    rounds = _rounds(run_dir)
    assert [r["round"] for r in rounds] == [0, 2, 4]  # eval_every 2
    assert [r["round"] for r in read_metrics(run_dir) if "round" in r] == [0, 1, 2, 3, 4]
    prefs = pq.read_table(run_dir / "rounds" / "round_0000" / "preferences.parquet")
    assert set(prefs.column("num_responses").to_pylist()) == {4}  # full rankings of K = 4
    assert rounds[-1]["eval/reward/mean"] > rounds[0]["eval/reward/mean"] + 0.05
    for r in read_metrics(run_dir):  # every round's sync landed, and the samplers sampled it
        if "round" in r:
            assert 0 <= r["sync/logp_max_abs_diff"] < 1e-4, r["round"]
            assert 0 <= r["rollout/mismatch_kl"] < 1e-6 and r["sync_bytes"] > 100_000, r["round"]
    assert all(r["eval/kl"] > 0.5 for r in rounds[1:]), [r["eval/kl"] for r in rounds]
    # The failed round left nothing behind; the rounds before it are all there.
    assert pq.read_table(run_dir / "rounds" / "round_0004" / "samples.parquet").num_rows == 384
    # Round 3 sampled no held-out prompts: 48 training prompts x 4.
    assert pq.read_table(run_dir / "rounds" / "round_0003" / "samples.parquet").num_rows == 192
    assert not (run_dir / "rounds" / "round_0005").exists()
    checkpoints = Checkpoints(run_dir)
    assert checkpoints.driver_state(checkpoints.latest())["round"] == 5  # after round 4
    # The job's actors are gone: a shared cluster gets its resources back.
    deadline = time.time() + 30
    while ray_cluster.available_resources().get("CPU", 0) < free and time.time() < deadline:
        time.sleep(0.5)
    assert ray_cluster.available_resources().get("CPU", 0) >= free

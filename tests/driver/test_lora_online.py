"""Online DPO training a LoRA adapter: only the adapter goes to the samplers, whose engines keep
the base weights and serve the reference (the base model) themselves; no reference server."""

import math
import shutil

import pytest
import torch

from rlhf.run_dir import read_metrics
from tests.driver.conftest import SEQ, trainer_logprobs
from tests.driver.test_online_dpo import online_config

pytestmark = pytest.mark.integration


def base_logprobs(model_path: str) -> list[float]:
    """Per-token log-probs of ``SEQ`` (tokens 1..L-1) under the model as saved (Hugging Face)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    with torch.no_grad():
        logp = model(torch.tensor([SEQ])).logits.log_softmax(-1)[0]
    return [logp[t - 1, SEQ[t]].item() for t in range(1, len(SEQ))]


def model_bytes(model_path: str) -> int:
    """The bytes of the model's weights (float32)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


class AdapterSyncCheck:
    """A hook that reads round 0's sync: sampler 0's log-probs of ``SEQ`` with and without its
    adapter, the trained policy's (merged on the trainers) and Ray's live actor classes."""

    def __init__(self, ray, model_path: str) -> None:
        self.ray, self.model_path = ray, model_path
        self.seen: dict[str, list[float]] = {}
        self.actor_classes: dict[str, str] = {}  # actor id -> class, of the live actors
        self.merging_layers: int | None = None

    def __call__(self, event) -> None:
        if event.phase != "sync" or event.round != 0:
            return
        sampler = event.workers.samplers[0]
        when = "after" if event.ended else "before"
        self.seen[f"{when}/adapter"] = self.ray.get(sampler.token_logprobs.remote([SEQ]))[0]
        base = sampler.token_logprobs.remote([SEQ], adapter=False)
        self.seen[f"{when}/base"] = self.ray.get(base)[0]
        if not event.ended:
            self.seen["trainer"] = trainer_logprobs(self.ray, event.workers.policy, self.model_path)
            # The layers computing the adapter with merged weights (vllm_lora_linear), not vLLM's
            # per-token CPU kernels: the log-probs above and the samples went through them.
            self.merging_layers = self.ray.get(sampler.merging_layers.remote())
            # The GCS actor table (what `ray list actors` shows; that CLI needs a dashboard).
            from ray._private.state import actors

            self.actor_classes = {
                actor_id: actor["ActorClassName"]
                for actor_id, actor in actors(actor_state_name="ALIVE").items()
            }


def test_online_dpo_with_lora_syncs_the_adapter_and_serves_the_reference_from_the_samplers(
    ray_cluster, tmp_path, embedded_model_path
):
    from rlhf.driver import online_dpo

    cfg = online_config(
        tmp_path / "run",
        embedded_model_path,
        trainer={"lr": 1e-2, "lora": {"r": 8, "alpha": 16}},
        samplers={"sync": "object_store"},
        rounds={"reference_update": "previous_round"},
    )
    from ray._private.state import actors

    check = AdapterSyncCheck(ray_cluster, embedded_model_path)
    # Actors of earlier tests may live on in the session's Ray (a session-scoped reference
    # server among them): the job's own are those that were not alive before it.
    earlier = set(actors(actor_state_name="ALIVE"))
    run_dir = online_dpo.run(cfg, hooks=[check])
    ours = {name for actor_id, name in check.actor_classes.items() if actor_id not in earlier}

    base = base_logprobs(embedded_model_path)
    trained, seen = check.seen["trainer"], check.seen
    # Before round 0's sync the sampler holds no adapter: the base model, not the trained policy.
    assert gap(seen["before/adapter"], base) < 1e-4
    assert gap(seen["before/adapter"], trained) > 1e-3
    # After it: the trainer's policy with the adapter, still the base model without it.
    assert gap(seen["after/adapter"], trained) < 1e-4
    assert gap(seen["after/base"], base) < 1e-4 and gap(seen["before/base"], base) < 1e-4
    assert check.merging_layers == 4  # each block's q/k/v (one layer in vLLM) and o
    # The reference came from the samplers: Ray ran no reference server.
    assert "Sampler" in ours and "ReferenceServer" not in ours, ours

    rounds = [r for r in read_metrics(run_dir) if "eval/reward/mean" in r]
    assert abs(rounds[0]["eval/kl"]) < 0.05  # round 0 samples base + a zero adapter = reference
    assert all(math.isfinite(r["eval/kl"]) for r in rounds)
    # Only the adapter travelled: a small share of the model's bytes.
    assert 0 < rounds[0]["sync_bytes"] < 0.1 * model_bytes(embedded_model_path)
    sft, last = rounds[0]["eval/reward/mean"], rounds[-1]["eval/reward/mean"]
    assert last > sft + 0.05, [r["eval/reward/mean"] for r in rounds]
    # reference_update: previous_round. Each round's reference is the adapter that sampled it
    # (the samplers score with it after round 0; the base model in round 0), which is the
    # policy when the round starts training: every round's first step has loss ln 2.
    records = read_metrics(run_dir)
    first_steps = [1] + [r["step"] + 1 for r in rounds[:-1]]
    losses = {r["step"]: r["train/loss"] for r in records if "train/loss" in r}
    assert all(abs(losses[step] - math.log(2)) < 1e-4 for step in first_steps), [
        losses[step] for step in first_steps
    ]
    assert any(abs(loss - math.log(2)) > 1e-2 for loss in losses.values())  # it trains


# --- PPO with LoRA on lm_head too: reward rises; a resumed run ends as the whole one -------------


ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def ppo_lora_config(out_dir, model_path):
    """GRPO training a LoRA adapter (r 8) on the attention projections and the output head,
    the samplers serving the reference. The head matters on this task, whose preference is
    for words, which the head shifts directly: held-out reward over 3 iterations, seed 0,
    0.495 / 0.594 / 0.645 with it; without it 0.495 / 0.560 / 0.553 at best (r 16 on every
    block projection)."""
    from rlhf.config import from_dict
    from rlhf.driver import ppo

    data = {
        "output_dir": str(out_dir),
        "model": {"path": model_path},
        "samplers": {"sampling": {"n": 4, "max_tokens": 40}},
        "ppo": {
            "iterations": 3,
            "prompts_per_iteration": 64,
            "eval_prompts": 48,
            "epochs": 4,
            "minibatch_size": 32,
            "advantage": "grpo",
            "kl_coef": 0.05,
        },
        "trainer": {
            "num_ranks": 1,
            "micro_batch_sequences": 32,
            "lr": 3e-3,
            "lora": {"r": 8, "alpha": 16, "target_modules": [*ATTENTION, "lm_head"]},
        },
        "keep_checkpoints": 3,
    }
    return from_dict(ppo.PPOConfig, data)


def test_ppo_with_an_lm_head_adapter_raises_reward_and_resumes_as_the_whole_run(
    ray_cluster, tmp_path, embedded_model_path
):
    """The whole run: the samplers' engines serve the head's adapter, in samples and in prompt
    log-probs (the trainer's policy with it, the base model without it), and the reward rises.
    Then the run resumes from its checkpoint before the last iteration, what a kill in that
    iteration leaves on disk (the adapter and its optimizer state, not the base weights), and
    must log the same numbers and save the same adapter: the fresh samplers get the restored
    adapter before they sample."""
    from ray._private.state import actors
    from safetensors.torch import load_file

    from rlhf.driver import ppo
    from rlhf.run_dir import Checkpoints
    from tests.driver.test_online_faults import VARIES

    check = AdapterSyncCheck(ray_cluster, embedded_model_path)
    earlier = set(actors(actor_state_name="ALIVE"))
    whole = ppo.run(ppo_lora_config(tmp_path / "whole", embedded_model_path), hooks=[check])
    ours = {name for actor_id, name in check.actor_classes.items() if actor_id not in earlier}

    base = base_logprobs(embedded_model_path)
    trained, seen = check.seen["trainer"], check.seen
    assert gap(seen["before/adapter"], base) < 1e-4  # no adapter yet: the base model
    assert gap(seen["before/adapter"], trained) > 1e-3
    assert gap(seen["after/adapter"], trained) < 1e-4  # the head's adapter included
    assert gap(seen["after/base"], base) < 1e-4 and gap(seen["before/base"], base) < 1e-4
    assert check.merging_layers == 4  # q/k/v and o of each block; the head has its own path
    assert "Sampler" in ours and "ReferenceServer" not in ours, ours

    iterations = [r for r in read_metrics(whole) if "eval/reward/mean" in r]
    assert abs(iterations[0]["train/kl"]) < 1e-3  # the samplers' base model is the reference
    rewards = [r["eval/reward/mean"] for r in iterations]
    assert rewards[-1] > rewards[0] + 0.05, rewards
    # GRPO needs no critic: none trained, none checkpointed; the iterations are synchronous.
    assert [r["rollout/policy_version_lag"] for r in iterations] == [0, 0, 0]
    assert not any(key.startswith("critic/") for key in iterations[-1])
    latest = sorted((whole / "checkpoints").glob("step_*"))[-1]
    assert "critic" not in {p.name for p in latest.iterdir()}

    killed = tmp_path / "killed"
    shutil.copytree(whole, killed)
    checkpoints = Checkpoints(killed)
    last = len(iterations) - 1
    before_last = [
        p
        for p in sorted((killed / "checkpoints").glob("step_*"))
        if checkpoints.driver_state(p)["round"] == last
    ]
    assert len(before_last) == 1, sorted((killed / "checkpoints").iterdir())
    (killed / "checkpoints" / "latest").write_text(before_last[0].name)
    shutil.rmtree(killed / "model")
    resumed = ppo.run(ppo_lora_config(killed, embedded_model_path), resume=True)

    got, want = read_metrics(resumed), read_metrics(whole)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    timing = {k for r in want for k in r if k.startswith("time/") or k.endswith("_per_s")}
    # The samples (rewards, lengths, KL) come out identical; the training numbers of the
    # resumed iteration drift by float round-off (a relative 4e-5 at most in one run).
    for g, w in zip(got, want, strict=True):
        for key in (k for k in w if k not in timing | VARIES):
            assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-6), (g["step"], key)
    adapter = "model/adapter_model.safetensors"
    got, want = load_file(resumed / adapter), load_file(whole / adapter)
    assert got.keys() == want.keys() and any(".lm_head." in name for name in want)
    assert all(torch.allclose(got[k], want[k], atol=1e-5) for k in want)  # 1.3e-6 seen

"""Online DPO training a LoRA adapter: only the adapter goes to the samplers, whose engines keep
the base weights and serve the reference (the base model) themselves; no reference server."""

import math

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
    # The reference came from the samplers: Ray ran no reference server.
    assert "Sampler" in ours and "ReferenceServer" not in ours, ours

    rounds = [r for r in read_metrics(run_dir) if "eval/reward/mean" in r]
    assert abs(rounds[0]["eval/kl"]) < 0.05  # round 0 samples base + a zero adapter = reference
    assert all(math.isfinite(r["eval/kl"]) for r in rounds)
    # Only the adapter travelled: a small share of the model's bytes.
    assert 0 < rounds[0]["sync_bytes"] < 0.1 * model_bytes(embedded_model_path)
    sft, last = rounds[0]["eval/reward/mean"], rounds[-1]["eval/reward/mean"]
    assert last > sft + 0.05, [r["eval/reward/mean"] for r in rounds]

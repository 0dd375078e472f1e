"""The role steps and ``TrainerRank``'s loops without Ray or DeepSpeed (``local_model``).

Each role's step over two ranks with uneven shards (and an empty one) must take the gradient of
its loss on the whole batch computed directly: the token mean for the PPO policy and critic,
the prompt mean for a preference loss. The metrics merged over the ranks must equal one rank's
on the whole batch.
"""

from __future__ import annotations

import functools

import pytest
import torch

from actors.critic import ValueStep
from actors.ppo_policy import PPOPolicyStep
from actors.rank import TrainerRank
from actors.trainer import PreferenceStep
from rlhf.algorithms import (
    RankedLogps,
    entropy_from_logits,
    get_preference_loss,
    ppo_policy_loss,
    ppo_value_loss,
    sequence_logps,
)
from rlhf.data.batch import RolloutBatch
from rlhf.driver import experience as xp
from rlhf.driver.metrics import merge_rank_metrics
from rlhf.models.hf import batch_logps, load_causal_lm, load_value_model, positions, token_values
from tests.actors.local_model import LocalModel, data_parallel_grads
from tests.models.tiny_llama import random_batch

# (rows, micro batches per rank): shards of 3 + 2 rows in micro batches of 2 + 1 and 1 + 1;
# then 1 + 0 rows, the second rank's only micro batch empty.
SHARDINGS = [(5, 2), (1, 1)]
CLIP = 0.2
ENTROPY = 0.01


@pytest.fixture(scope="module")
def policy(tiny_llama_path):
    return load_causal_lm(tiny_llama_path)


@pytest.fixture(scope="module")
def value_model(tiny_llama_path):
    torch.manual_seed(0)  # the value head starts fresh
    return load_value_model(tiny_llama_path)


def _rollout(rows: int, seed: int, policy: torch.nn.Module | None = None) -> RolloutBatch:
    """Random sequences with random advantages, returns and old values on the response tokens,
    and old log-probs near ``policy``'s own (so that some ratios clip)."""
    b = random_batch(rows, num_responses=1, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    mask = b.loss_mask.float()

    def noise(scale: float) -> torch.Tensor:
        return torch.randn(b.input_ids.shape, generator=gen) * scale * mask

    batch = RolloutBatch(
        b.input_ids,
        b.attention_mask,
        b.loss_mask,
        advantages=noise(1.0),
        returns=noise(1.0),
        old_values=noise(1.0),
    )
    if policy is not None:
        with torch.no_grad():
            logits = policy(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
            _, logps = sequence_logps(logits, b.input_ids, b.loss_mask)
        batch.old_logps = logps + noise(0.3)
    return batch


def _direct_grads(module: torch.nn.Module, loss_of) -> dict[str, torch.Tensor]:
    """The gradient of ``loss_of(copy of module)`` on a fresh copy of the weights."""
    model = LocalModel(module, 0, 1).engine.module
    loss_of(model).backward()
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def _two_ranks_and_one(module, make_step, batch, total, num_micro, **config):
    """Train steps of two ranks on ``batch``'s shards, and of one rank on all of it."""
    two = [LocalModel(module, rank, 2, **config) for rank in (0, 1)]
    parts = [
        TrainerRank.around(m, make_step).train_step(batch.shard(m.rank, 2), total, num_micro)
        for m in two
    ]
    one = LocalModel(module, 0, 1, **config)
    whole = TrainerRank.around(one, make_step).train_step(batch, total, 3)
    return two, parts, one, whole


def _same_metrics(parts: list[dict], whole: dict, per: str) -> None:
    merged, alone = merge_rank_metrics(parts, per), merge_rank_metrics([whole], per)
    for key in ("tokens_per_s", "grad_norm"):  # time, and the stand-in's per-rank norm
        merged.pop(key), alone.pop(key)
    assert merged == pytest.approx(alone, rel=1e-5, abs=1e-6)


def _same_grads(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert expected  # the loss reached the weights
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize(("rows", "num_micro"), SHARDINGS)
def test_ppo_policy_step_over_uneven_shards_is_the_token_mean(policy, rows, num_micro):
    batch = _rollout(rows, seed=rows, policy=policy)
    total = batch.num_tokens
    make_step = functools.partial(PPOPolicyStep, clip_eps=CLIP, entropy_coef=ENTROPY)
    two, parts, one, whole = _two_ranks_and_one(policy, make_step, batch, total, num_micro)

    def loss_of(model):
        mask = batch.loss_mask
        logits = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=positions(batch.attention_mask),
        ).logits
        _, logp = sequence_logps(logits, batch.input_ids, mask)
        loss, _ = ppo_policy_loss(logp, batch.old_logps, batch.advantages, mask, CLIP)
        valid = mask[:, 1:].float()
        entropy = (entropy_from_logits(logits[:, :-1]) * valid).sum() / valid.sum()
        return loss - ENTROPY * entropy

    expected = _direct_grads(policy, loss_of)
    _same_grads(data_parallel_grads(two), expected)
    _same_grads(one.grads(), expected)
    assert [p["tokens"] for p in parts] == [batch.shard(r, 2).num_tokens for r in (0, 1)] and sum(
        p["tokens"] for p in parts
    ) == total
    _same_metrics(parts, whole, per="tokens")
    assert sorted(whole["sums"]) == ["approx_kl", "clip_fraction", "entropy", "policy_loss"]
    if rows > 1:
        assert 0 < merge_rank_metrics(parts, "tokens")["clip_fraction"] < 1


def test_the_ppo_policy_s_lm_head_skips_the_prompt_positions_all_rows_share(policy):
    """The step's forward asks for logits from the position before the micro batch's earliest
    response token on; the gradient test above and the score test below check the values
    against the full logits."""
    batch = _rollout(4, seed=3, policy=policy)
    first = int(batch.loss_mask.bool().any(0).nonzero()[0])
    assert first > 2, "the test needs prompts longer than two tokens"
    local = LocalModel(policy, 0, 1)
    rank = TrainerRank.around(local, functools.partial(PPOPolicyStep, clip_eps=CLIP))
    head = local.engine.module.lm_head
    seen = []
    hook = head.register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[1]))
    try:
        scores = rank.score(batch, 1)
        rank.train_step(batch, batch.num_tokens, 1)
    finally:
        hook.remove()
    width = batch.input_ids.shape[1]
    assert seen == [width - (first - 1)] * 2
    assert scores.shape == batch.input_ids.shape and torch.all(scores[:, :first] == 0)
    assert head.weight.grad is not None


@pytest.mark.parametrize(("rows", "num_micro"), SHARDINGS)
def test_critic_step_over_uneven_shards_is_the_token_mean(value_model, rows, num_micro):
    batch = _rollout(rows, seed=rows)
    total = batch.num_tokens
    make_step = functools.partial(ValueStep, value_clip_eps=CLIP)
    two, parts, one, whole = _two_ranks_and_one(value_model, make_step, batch, total, num_micro)

    def loss_of(model):
        values = token_values(model, batch.input_ids, batch.attention_mask, batch.loss_mask)
        loss, _ = ppo_value_loss(values, batch.old_values, batch.returns, batch.loss_mask, CLIP)
        return loss

    expected = _direct_grads(value_model, loss_of)
    _same_grads(data_parallel_grads(two), expected)
    _same_grads(one.grads(), expected)
    _same_metrics(parts, whole, per="tokens")
    assert sorted(whole["sums"]) == ["value_clip_fraction", "value_loss", "values"]


def test_a_step_over_rows_of_a_held_batch_is_the_step_over_those_rows_sent(policy):
    """``train_held``: each rank of two holds the whole batch and takes its shard of the step's
    rows; the gradient and metrics equal ``train_step`` on the rows the driver would send."""
    batch = _rollout(7, seed=3, policy=policy)
    rows = torch.tensor([5, 0, 3, 6, 2])  # a shuffled mini-batch, as the driver's
    sent = batch.select(rows)
    make_step = functools.partial(PPOPolicyStep, clip_eps=CLIP)
    held, direct = [], []
    for rank in (0, 1):
        model = LocalModel(policy, rank, 2)
        trainer = TrainerRank.around(model, make_step)
        trainer.hold_batch("rollout", batch)
        held.append((model, trainer.train_held("rollout", rows.tolist(), sent.num_tokens, 2)))
        model = LocalModel(policy, rank, 2)
        part = TrainerRank.around(model, make_step).train_step(
            sent.shard(rank, 2), sent.num_tokens, 2
        )
        direct.append((model, part))
    _same_grads(
        data_parallel_grads([m for m, _ in held]), data_parallel_grads([m for m, _ in direct])
    )
    for (_, got), (_, expected) in zip(held, direct, strict=True):
        assert got["sums"] == pytest.approx(expected["sums"], rel=1e-6)
        assert got["tokens"] == expected["tokens"] > 0
    with pytest.raises(KeyError, match="no batch 'other' held"):
        trainer.train_held("other", [0], 1, 1)


class _InProcessGroup:
    """An ``ActorGroup``'s face over ranks in this process: ``call`` answers at once."""

    def __init__(self, ranks: list[TrainerRank]) -> None:
        self.ranks = ranks

    def __len__(self) -> int:
        return len(self.ranks)

    def call(self, method: str, *args):
        return [getattr(rank, method)(*args) for rank in self.ranks]


def test_the_driver_s_queued_steps_give_each_step_s_metrics_in_order(
    policy, value_model, monkeypatch
):
    """``experience.train_steps`` (held batch, rows by length, every step queued): each step's
    merged metrics equal those of the step's rows sent to the ranks as before."""
    monkeypatch.setattr(xp.ray, "put", lambda value: value)
    monkeypatch.setattr(xp, "bounded_get", lambda refs, names, timeout_s, what: list(refs))
    batch = _rollout(7, seed=5, policy=policy)
    steps = [torch.tensor([5, 0, 3, 6, 2]), torch.tensor([1, 4])]
    roles = [
        (policy, functools.partial(PPOPolicyStep, clip_eps=CLIP), 2),
        (value_model, functools.partial(ValueStep, value_clip_eps=CLIP), 1),
    ]
    groups = [
        _InProcessGroup([TrainerRank.around(LocalModel(m, r, n), make) for r in range(n)])
        for m, make, n in roles
    ]
    got = list(xp.train_steps(*groups, batch, steps, (1, 2)))
    assert len(got) == len(steps) and got[0]["policy/tokens"] == batch.select(steps[0]).num_tokens
    for rows, metrics in zip(steps, got, strict=True):
        sent = batch.select(rows)
        expected = {}
        for (m, make, n), prefix in zip(roles, ("policy", "critic"), strict=True):
            num_micro = xp.micro_batches(len(rows), n, 1 if prefix == "policy" else 2)
            parts = [
                TrainerRank.around(LocalModel(m, r, n), make).train_step(
                    sent.shard(r, n), sent.num_tokens, num_micro
                )
                for r in range(n)
            ]
            expected |= xp.combine(parts, prefix)
        # Time, and the stand-in's per-rank norm of a gradient it never zeroes.
        for key in ("tokens_per_s", "grad_norm"):
            for prefix in ("policy", "critic"):
                got_value, expected_value = (
                    metrics.pop(f"{prefix}/{key}"),
                    expected.pop(f"{prefix}/{key}"),
                )
                assert got_value > 0 and expected_value > 0
        assert metrics == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("role", ["policy", "critic"])
def test_score_over_shards_equals_one_forward_of_the_batch(policy, value_model, role):
    """``token_logps`` / ``values``: micro batches of consecutive rows, padded back to the
    shard's width, equal to one forward over the whole batch (0 off the response tokens)."""
    module, make_step = {
        "policy": (policy, functools.partial(PPOPolicyStep)),
        "critic": (value_model, functools.partial(ValueStep)),
    }[role]
    batch = _rollout(5, seed=7)
    ranks = [TrainerRank.around(LocalModel(module, r, 2), make_step) for r in (0, 1)]
    parts = [rank.score(batch.shard(rank.model.rank, 2), 2) for rank in ranks]
    width = batch.input_ids.shape[1]
    got = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])
    with torch.no_grad():
        if role == "policy":
            logits = module(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            _, expected = sequence_logps(logits, batch.input_ids, batch.loss_mask)
        else:
            expected = token_values(module, batch.input_ids, batch.attention_mask, batch.loss_mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert torch.all(got[batch.loss_mask == 0] == 0)


@pytest.mark.parametrize("share_prompt", [True, False])
def test_preference_step_over_uneven_shards_is_the_prompt_mean(policy, share_prompt):
    """3 prompts over 2 ranks, one prompt per micro batch: shards of 2 + 1 prompts, the second
    rank's last micro batch empty."""
    batch = random_batch(3, num_responses=2, seed=21)
    batch.ref_logps = torch.linspace(-30.0, -20.0, 6)
    make_step = functools.partial(PreferenceStep, loss="sigmoid", beta=0.1)
    config = {"micro_batch_prompts": 1, "share_prompt": share_prompt}
    two, parts, one, whole = _two_ranks_and_one(policy, make_step, batch, 3, None, **config)

    def loss_of(model):
        logps, _ = batch_logps(model, batch.input_ids, batch.attention_mask, batch.loss_mask)
        ranked = RankedLogps(
            policy=logps.view(-1, 2),
            reference=batch.ref_logps.view(-1, 2),
            lengths=batch.response_lengths.view(-1, 2),
        )
        return get_preference_loss("sigmoid")(ranked, 0.1).mean()

    expected = _direct_grads(policy, loss_of)
    _same_grads(data_parallel_grads(two), expected)
    _same_grads(one.grads(), expected)
    assert [p["prompts"] for p in parts] == [2, 1]
    _same_metrics(parts, whole, per="prompts")


def test_a_new_preference_metric_reaches_the_merged_metrics(policy, monkeypatch):
    """Metric keys are the step's: one more key from ``preference_metrics`` is merged and
    logged without being listed anywhere else."""
    import actors.trainer

    original = actors.trainer.preference_metrics

    def with_new_metric(logps, beta):
        return original(logps, beta) | {"rewards/new": 0.25}

    monkeypatch.setattr(actors.trainer, "preference_metrics", with_new_metric)
    batch = random_batch(3, num_responses=2, seed=22)
    batch.ref_logps = torch.zeros(6)
    make_step = functools.partial(PreferenceStep, loss="sigmoid", beta=0.1)
    ranks = [
        TrainerRank.around(
            LocalModel(policy, r, 2, micro_batch_prompts=1, share_prompt=True), make_step
        )
        for r in (0, 1)
    ]
    parts = [rank.eval_step(batch.shard(rank.model.rank, 2), 3) for rank in ranks]
    merged = merge_rank_metrics(parts)
    assert merged["rewards/new"] == pytest.approx(0.25)
    assert merged["prompts"] == 3

"""The online skeleton's pieces that need no actors: phase hooks, round prompts, config checks.

The skeleton itself runs in the online DPO, PPO and fault tests (integration)."""

import pytest

from rlhf.config import ConfigError, from_dict
from rlhf.data.prompts import PromptsConfig
from rlhf.driver.online_loop import Hooks, PhaseEvent, RoundSizes, round_prompts
from rlhf.schema import ModelConfig
from rlhf.task import make_prompts


def test_hooks_hear_a_phase_start_and_end_in_order():
    heard: list[tuple[str, str, int | None, bool]] = []
    hooks = Hooks(
        [
            lambda e: heard.append(("a", e.phase, e.round, e.ended)),
            lambda e: heard.append(("b", e.phase, e.round, e.ended)),
        ]
    )
    with hooks.phase("generate", 3):
        heard.append(("body", "", None, False))
    assert heard == [
        ("a", "generate", 3, False),
        ("b", "generate", 3, False),
        ("body", "", None, False),
        ("a", "generate", 3, True),
        ("b", "generate", 3, True),
    ]


def test_a_failed_phase_has_no_end_event():
    heard: list[PhaseEvent] = []
    hooks = Hooks([heard.append])
    with pytest.raises(RuntimeError), hooks.phase("score", 0):
        raise RuntimeError("reward died")
    assert [(e.phase, e.ended) for e in heard] == [("score", False)]
    assert heard[0].workers is None  # no actor started yet


def test_round_prompts_are_the_same_for_a_resumed_run_and_held_out_apart():
    class Cfg:
        seed = 3
        prompts = PromptsConfig()  # embedded: the task's prompts, in the order they always had
        model = ModelConfig()

    def drawn(sizes: RoundSizes) -> tuple[list[str], list[str]]:
        source, held_out = round_prompts(Cfg, sizes, "unused: embedded prompts")
        rounds = range(sizes.rounds)
        train = [p.text for r in rounds for p in source.for_round(r, sizes.prompts_per_round)]
        return train, [p.text for p in held_out]

    train, held_out = drawn(RoundSizes(rounds=2, prompts_per_round=5, eval_prompts=4))
    assert train == make_prompts(10, seed=3, split="train")
    assert held_out == make_prompts(4, seed=3, split="eval")
    assert not set(train) & set(held_out)
    assert drawn(RoundSizes(2, 5, 4)) == (train, held_out)


@pytest.mark.parametrize("loop", ["online_dpo", "ppo"])
def test_keep_checkpoints_is_one_top_level_key_of_both_online_loops(loop):
    from rlhf.driver.online_dpo import OnlineDPOConfig
    from rlhf.driver.ppo import PPOConfig

    cls = {"online_dpo": OnlineDPOConfig, "ppo": PPOConfig}[loop]
    assert from_dict(cls, {"keep_checkpoints": 5}).keep_checkpoints == 5
    with pytest.raises(ConfigError, match="keep_checkpoints must be at least 1, got 0"):
        from_dict(cls, {"keep_checkpoints": 0})

"""Asynchronous rounds (``rounds.max_staleness``): the samples in flight at a checkpoint, PPO's
behaviour log-probs, the config check. The staleness-1 online DPO run (the versions that sample
each round, the bound, and a driver killed with samples in flight that resumes as the
uninterrupted run) is in ``test_online_faults.py``, sharing its kill and resume."""

import pytest
import torch

from rlhf.config import ConfigError
from rlhf.data.batch import RolloutBatch
from rlhf.driver import experience as xp
from rlhf.driver.online_loop import IN_FLIGHT, read_in_flight, write_in_flight
from rlhf.driver.rollout import PendingSamples, ScoredGroup
from rlhf.models.vllm_engine import Completion
from rlhf.models.vllm_sync import StaleWeightsError
from tests.driver.test_online_faults import small_config


def _completion(prompt_ids, token_ids, token_logprobs):
    return Completion(
        "p", prompt_ids, "t", token_ids, True, sum(token_logprobs), list(token_logprobs)
    )


def test_samples_in_flight_are_written_with_a_checkpoint_and_read_back(tmp_path):
    groups = [[_completion([1, 2], [3, 4], [-0.25, -1.5])], [_completion([5], [6], [-0.1])]]
    write_in_flight({3: PendingSamples.done(groups, version=2)}, tmp_path)
    back = read_in_flight(tmp_path)
    assert list(back) == [3] and back[3].version == 2
    assert back[3].get() == groups  # every field, floats exactly
    assert read_in_flight(tmp_path / "none") == {} and read_in_flight(None) == {}
    write_in_flight({}, tmp_path / "empty")  # synchronous rounds: no file at all
    assert not (tmp_path / "empty" / IN_FLIGHT).exists()


class _DiedSampling:
    """Samples whose sampler died on the way (the round samples again when it comes)."""

    version = 1

    def get(self):
        raise StaleWeightsError("restarted")


def test_samples_whose_sampler_died_are_left_out_of_the_checkpoint(tmp_path):
    groups = [[_completion([1], [2], [-0.5])]]
    write_in_flight({1: _DiedSampling(), 2: PendingSamples.done(groups, 1)}, tmp_path)
    assert list(read_in_flight(tmp_path)) == [2]
    write_in_flight({1: _DiedSampling()}, tmp_path / "none")
    assert not (tmp_path / "none" / IN_FLIGHT).exists()


def test_behaviour_logps_align_with_the_rollout_batch():
    groups = [
        ScoredGroup("p", [_completion([5, 6], [7, 8], [-0.5, -0.25])], [1.0]),
        ScoredGroup("q", [_completion([9], [10, 11, 12], [-1.0, -2.0, -3.0])], [0.0]),
    ]
    batch, _, _ = xp.rollout_batch(groups, [[0.0] * 3, [0.0] * 3], pad_token_id=0)
    behaviour = xp.behaviour_logps(groups, batch.input_ids.shape[1])
    assert behaviour.tolist() == [[0, 0, -0.5, -0.25], [0, -1.0, -2.0, -3.0]]
    assert (behaviour != 0).eq(batch.loss_mask.bool()).all()
    short = [ScoredGroup("p", [_completion([5], [7, 8], [-0.5])], [1.0])]
    with pytest.raises(ValueError, match="1 sampler log-probs for 2 response tokens"):
        xp.behaviour_logps(short, 3)


def test_importance_weights_of_a_batch():
    # pi_old / mu = e^0 = 1, e^1 = 2.718 (capped at 2), and e^-1 on a second row.
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    batch = RolloutBatch(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3), mask)
    batch.old_logps = torch.tensor([[0.0, -1.0, -1.0], [0.0, -2.0, 0.0]])
    behaviour = torch.tensor([[0.0, -1.0, -2.0], [0.0, -1.0, 0.0]])
    batch, stats = xp.importance_weights(batch, behaviour, cap=2.0)
    torch.testing.assert_close(
        batch.is_weights, torch.tensor([[0.0, 1.0, 2.0], [0.0, torch.e**-1, 0.0]])
    )
    assert stats["ppo_is/ratio_mean"] == pytest.approx((1 + torch.e + torch.e**-1) / 3)
    assert stats["ppo_is/ratio_max"] == pytest.approx(torch.e)
    assert stats["ppo_is/capped_fraction"] == pytest.approx(1 / 3)
    off, none = xp.importance_weights(RolloutBatch(*[torch.zeros(1, 2)] * 3), behaviour, None)
    assert off.is_weights is None and none == {}


def test_max_staleness_is_checked_at_load(tmp_path):
    with pytest.raises(ConfigError, match=r"rounds.max_staleness must be >= 0"):
        small_config(tmp_path, "m", rounds={"max_staleness": -1})
    with pytest.raises(ConfigError, match="sleep_when_idle"):
        small_config(
            tmp_path,
            "m",
            rounds={"max_staleness": 1},
            samplers={"engine": {"sleep_when_idle": True}},
        )

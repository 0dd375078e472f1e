"""The sync probe's and the mismatch KL's arithmetic, against hand-computed values; the probe's
settings. (On real engines: a sync that did not land is caught in tests/driver/test_weight_sync.py,
and every online DPO round's probe and mismatch KL are checked in tests/driver/test_online_dpo.py.)"""

import math
from dataclasses import dataclass

import pytest

from rlhf.config import ConfigError, from_dict
from rlhf.driver.sync_probe import (
    SyncProbe,
    SyncProbeConfig,
    max_abs_diff,
    mismatch_kl,
    response_logps,
)


def test_mismatch_kl_is_the_mean_k3_over_tokens():
    # r = log pi - log mu per token: 0, ln 2, -ln 2.
    # k3 = e^r - 1 - r: 0; 2 - 1 - ln 2 = 0.306853; 1/2 - 1 + ln 2 = 0.193147. Mean: 0.166667.
    sampler = [[-1.0, -2.0], [-3.0]]
    trainer = [[-1.0, -2.0 + math.log(2)], [-3.0 - math.log(2)]]
    assert mismatch_kl(sampler, trainer) == pytest.approx((0.306853 + 0.193147) / 3, abs=1e-6)
    assert mismatch_kl(sampler, sampler) == 0.0
    assert mismatch_kl([], []) == 0.0
    with pytest.raises(ValueError):  # a response scored with another length
        mismatch_kl([[-1.0, -2.0]], [[-1.0]])


def test_max_abs_diff_and_response_logps():
    assert max_abs_diff([[0.0, -1.0], [-2.0]], [[0.1, -1.0], [-2.5]]) == pytest.approx(0.5)
    # tokens 1..4 of a 5-token sequence whose last 2 are the response
    assert response_logps([-1.0, -2.0, -3.0, -4.0], 2) == [-3.0, -4.0]
    assert response_logps([-1.0], 0) == []


@dataclass
class _Completion:
    prompt_ids: list
    token_ids: list


@dataclass
class _Group:
    completions: list


def test_probe_fixes_the_first_groups_first_completions_once():
    probe = SyncProbe(tolerance=1e-3, count=2, timeout_s=5)
    groups = [
        _Group([_Completion([1], []), _Completion([1], [9])]),  # one token: nothing to score
        _Group([_Completion([1, 2], [3]), _Completion([1, 2], [4])]),
        _Group([_Completion([5], [6, 7])]),
        _Group([_Completion([8], [9])]),
    ]
    probe.fix(groups)
    assert probe.sequences == [[1, 2, 3], [5, 6, 7]]
    probe.fix([_Group([_Completion([4], [4])])])  # a later round: the sequences stay
    assert probe.sequences == [[1, 2, 3], [5, 6, 7]]


def test_probe_settings_tolerance_by_dtype_and_checked_at_load():
    assert SyncProbeConfig().tolerance_for("float32") == 1e-3
    assert SyncProbeConfig().tolerance_for("bfloat16") == 0.1
    assert SyncProbeConfig(tolerance=0.5).tolerance_for("float32") == 0.5
    from rlhf.driver.online_dpo import OnlineDPOConfig
    from rlhf.driver.online_loop import job_probe

    cfg = from_dict(OnlineDPOConfig, {"model": {"dtype": "bfloat16"}, "ray": {"call_timeout_s": 7}})
    probe = job_probe(cfg)
    assert (probe.tolerance, probe.count, probe.timeout_s) == (0.1, 4, 7)
    off = {"samplers": {"sync_probe": {"enabled": False}}}
    assert job_probe(from_dict(OnlineDPOConfig, off)) is None
    with pytest.raises(ConfigError, match=r"samplers.sync_probe: tolerance must be > 0"):
        from_dict(OnlineDPOConfig, {"samplers": {"sync_probe": {"tolerance": 0}}})
    with pytest.raises(ConfigError, match=r"ray: call_timeout_s must be > 0, got 0"):
        from_dict(OnlineDPOConfig, {"ray": {"call_timeout_s": 0}})


def test_ppo_mismatch_kl_takes_the_response_tokens_of_its_batch():
    """PPO's version (from the trainer's old log-probs) averages k3 over the loss mask only."""
    import torch

    from rlhf.data.batch import RolloutBatch
    from rlhf.driver.experience import mismatch_kl as batch_mismatch_kl

    ids = torch.zeros((2, 3), dtype=torch.int64)
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    batch = RolloutBatch(ids, torch.ones_like(ids), mask)
    behaviour = torch.tensor([[0.0, -1.0, -2.0], [0.0, -3.0, 0.0]])
    # off the mask: anything (here 5.0) must not count
    batch.old_logps = torch.tensor(
        [[5.0, -1.0, -2.0 + math.log(2)], [5.0, -3.0 - math.log(2), 5.0]]
    )
    expected = (0.0 + 0.306853 + 0.193147) / 3  # as in the list version above
    assert batch_mismatch_kl(batch, behaviour) == pytest.approx(expected, abs=1e-6)

"""Rounds without training data (issue 20): a warning while a later round could train, an error
that says what to do when none will (rlhf.driver.online_loop.is_empty_round). The configs that
could never train (samplers.sampling.n=1 with a pair strategy, schedule.max_steps=0) are refused
at load: tests/test_cli.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pyarrow as pa
import pytest

from rlhf.driver.online_loop import (
    MAX_EMPTY_ROUNDS,
    Job,
    NoTrainingDataError,
    OnlineAlgorithm,
    Round,
    RoundSizes,
    is_empty_round,
)

HINT = "raise samplers.sampling.n"


@dataclass
class _State:
    step: int = 0
    round: int = 0


def _job(rounds: int) -> Job:
    """A job with just what the check reads: the algorithm's sizes, units and hint, the state."""
    algorithm = OnlineAlgorithm(
        name="fake",
        sizes=RoundSizes(rounds, prompts_per_round=2, eval_prompts=1),
        roles=[],
        state_type=_State,
        start_groups=None,
        start_reference=None,
        build_batch=None,
        train=None,
        print_table=None,
        empty_hint=HINT,
    )
    fields = dict.fromkeys(
        ("cfg", "run_dir", "pad_token_id", "prompt_source", "eval_prompts", "workers"), None
    )
    fields |= dict.fromkeys(("checkpoints", "logger", "hooks"), None)
    return Job(algorithm=algorithm, state=_State(), **fields)


def _table(rows: int) -> pa.Table:
    """A round's preference table of ``rows`` rows (the check counts rows: ``len``)."""
    return pa.table({"prompt_ids": [[1, 2]] * rows})


def _round(job: Job, index: int, rows: int, trained_steps: int = 1) -> bool:
    """Runs the check on round ``index`` with a batch of ``rows``; a round with data then
    trains ``trained_steps`` steps, as the loop would."""
    empty = is_empty_round(job, Round(job, index, seed=0), _table(rows))
    if not empty:
        job.state.step += trained_steps
    return empty


def test_an_empty_round_warns_while_a_later_one_could_train(caplog) -> None:
    job = _job(rounds=5)
    with caplog.at_level(logging.WARNING, logger="rlhf.driver.online_loop"):
        assert _round(job, 0, rows=4) is False
        assert _round(job, 1, rows=0) is True
        assert job.empty_rounds == 1
        assert _round(job, 2, rows=3) is False  # data again: the count starts over
        assert job.empty_rounds == 0
        assert _round(job, 3, rows=0) is True
        assert _round(job, 4, rows=0) is True  # the last round, but the run has trained
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"round {i} yielded no training data, so it trains no step: {HINT}" for i in (1, 3, 4)
    ]
    assert job.state.step == 2


def test_empty_rounds_in_a_row_stop_the_run() -> None:
    assert MAX_EMPTY_ROUNDS == 3
    job = _job(rounds=10)
    assert _round(job, 0, rows=2) is False
    assert _round(job, 1, rows=0) is True
    assert _round(job, 2, rows=0) is True
    with pytest.raises(NoTrainingDataError) as error:
        _round(job, 3, rows=0)
    assert str(error.value) == (
        "rounds 1 to 3 yielded no training data (3 in a row); the run stopped, as the next "
        f"ones would most likely be empty too: {HINT}"
    )


@pytest.mark.parametrize("rounds", [1, 2])
def test_a_run_that_would_end_untrained_stops(rounds: int) -> None:
    job = _job(rounds)
    for index in range(rounds - 1):
        assert _round(job, index, rows=0) is True  # a later round could still train
    with pytest.raises(NoTrainingDataError) as error:
        _round(job, rounds - 1, rows=0)
    assert str(error.value) == (
        f"round {rounds - 1} yielded no training data, and no round of the run has trained a "
        f"step; the run stopped rather than save the untrained model: {HINT}"
    )


def test_online_dpo_names_what_to_do_and_the_cli_shows_one_line() -> None:
    from rlhf.cli import _user_error_kind
    from rlhf.driver.online_dpo import NO_PREFERENCES, OnlineDPOConfig, online_dpo

    assert online_dpo(OnlineDPOConfig()).empty_hint == NO_PREFERENCES
    assert "rounds.tie_tolerance" in NO_PREFERENCES
    assert _user_error_kind(NoTrainingDataError("x")) == "training stopped"

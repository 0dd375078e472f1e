"""Scoring guards: a reward function that misbehaves is named, never averaged into metrics."""

import pytest

from rlhf.driver.rollout import score
from rlhf.models.vllm_engine import Completion
from rlhf.rewards import flat_scorer, judge_scores


def _groups():
    def c(text):
        return Completion("p", [1, 5], text, [6, 2], True, -1.0)

    return [[c(" good ."), c(" bad .")], [c(" fine ."), c(" dull .")]]


def test_scores_are_grouped_by_prompt():
    scored = score(_groups(), flat_scorer(lambda p, r: [float(len(x)) for x in r]))
    assert [g.scores for g in scored] == [[7.0, 6.0], [7.0, 7.0]]


def test_the_reward_receives_the_prompt_as_given():
    messages = [{"role": "user", "content": "hi"}]
    seen = []

    def reward(prompts, responses):
        seen.extend(prompts)
        return [0.0] * len(responses)

    scored = score(_groups(), flat_scorer(reward), given=[messages, "q"])
    assert seen == [messages, messages, "q", "q"]  # one per response, as the user gave them
    assert [g.prompt_as_given for g in scored] == [messages, "q"]
    assert [g.prompt for g in scored] == ["p", "p"]  # the text the sampler was given
    assert score(_groups(), flat_scorer(reward))[0].prompt_as_given == "p"
    with pytest.raises(ValueError, match="1 prompts as given for 2 groups"):
        score(_groups(), flat_scorer(reward), given=["q"])


@pytest.mark.parametrize(
    "fn, error, message",
    [
        (lambda p, r: 1 / 0, RuntimeError, "the reward function raised ZeroDivisionError"),
        (lambda p, r: [float("nan")] * len(r), ValueError, "1 non-finite|4 non-finite"),
        (lambda p, r: [0.5] * (len(r) - 1), RuntimeError, "returned 3 scores for 4 responses"),
        (lambda p, r: ["high"] * len(r), ValueError, "non-numeric scores, first 'high'"),
    ],
)
def test_bad_reward_functions(fn, error, message):
    with pytest.raises(error, match=message):
        score(_groups(), flat_scorer(fn))


def test_judge_scores_are_mean_win_probabilities_in_both_orders():
    # A judge that prefers the longer answer, with a position bias of +0.1 for the first slot.
    def judge(prompt, a, b):
        return min(1.0, (0.9 if len(a) > len(b) else 0.1 if len(a) < len(b) else 0.5) + 0.1)

    scores = judge_scores(judge, "p", ["aaa", "a", "aa"])
    # "aaa" vs "a": asked as (aaa, a) -> 1.0 and as (a, aaa) -> 0.2, so aaa wins 1.0 + 0.8 ...
    assert scores[0] > scores[2] > scores[1]
    assert sum(scores) == pytest.approx(1.5)  # each of the 3 pairs hands out 2 in total, /(2*2)
    with pytest.raises(ValueError, match="not a probability"):
        judge_scores(lambda p, a, b: 2.0, "p", ["x", "y"])


def test_a_lost_reward_actor_is_passed_on_for_a_retry_not_blamed_on_the_function():
    """A reward actor that died (named by ``bounded_get``) is an actor failure the loop retries
    once Ray has restarted the actor, not an error of the user's reward function."""
    from rlhf.driver.retry import ACTOR_FAILURES, ActorLostError

    def lost(prompts, texts):
        raise ActorLostError("score: reward (actor 1f) died or is unreachable")

    with pytest.raises(ActorLostError, match="score: reward") as raised:
        score(_groups(), lost)
    assert isinstance(raised.value, ACTOR_FAILURES)

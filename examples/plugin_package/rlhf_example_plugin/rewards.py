"""A reward for the embedded sentiment task that also asks for brevity."""

from __future__ import annotations

from rlhf.rewards import register_reward_function
from rlhf.task import sentiment_reward


@register_reward_function("brief_sentiment")
def brief_sentiment(
    prompts: list[str], responses: list[str], max_words: int = 16, penalty: float = 0.02
) -> list[float]:
    """The task's P(positive review), minus ``penalty`` for every word beyond ``max_words``.

    Online DPO on the sentiment reward alone lets responses grow into long strings of praise;
    this reward prefers the shorter of two equally positive reviews.
    """
    scores = sentiment_reward(prompts, responses)
    return [
        score - penalty * max(0, len(response.split()) - max_words)
        for score, response in zip(scores, responses, strict=True)
    ]

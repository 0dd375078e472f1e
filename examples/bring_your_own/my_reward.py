"""The user's reward: how much of a response is the letter its prompt's system message asks for.

A reward function takes the prompts as they are in the prompt file (here chat messages, a list
of ``{role, content}``) and the response texts, and returns one score per response. This one
reads something only the messages have: the letter named in the system message.

In a config: ``reward: {kind: function, function: my_reward:letter_share}``, with this folder
on ``PYTHONPATH`` so that the driver and the Ray workers can import it.
"""

from __future__ import annotations

import re

ASKED = re.compile(r"letter '(\w)'")


def asked_letter(messages: list[dict[str, str]]) -> str:
    """The letter the system message asks for (``... the letter 'e' ...``)."""
    if not isinstance(messages, list):
        raise TypeError(
            f"letter_share expects each prompt as chat messages, got {type(messages).__name__}"
        )
    system = next(m["content"] for m in messages if m["role"] == "system")
    found = ASKED.search(system)
    if found is None:
        raise ValueError(f"the system message names no letter: {system!r}")
    return found.group(1)


def letter_share(prompts: list, responses: list[str]) -> list[float]:
    """Share of each response's characters that are its prompt's asked-for letter, in [0, 1]."""
    scores = []
    for messages, response in zip(prompts, responses, strict=True):
        letter = asked_letter(messages)
        scores.append(response.lower().count(letter) / max(len(response), 1))
    return scores

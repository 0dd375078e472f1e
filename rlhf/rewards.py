"""Reward sources: what turns K responses to a prompt into K scores.

Three kinds, chosen by the config's ``reward`` section:

- ``function``: any ``f(prompts, responses) -> scores``, by registry name or import path
  (``rlhf.task:sentiment_reward`` is the embedded task's);
- ``model``: a Hugging Face sequence-classification reward model (score = its logit ``label``);
- ``judge``: a pairwise judge ``judge(prompt, a, b) -> P(a is better)``, as in LLM-as-judge
  setups; each response's score is its mean win probability against the others of its prompt.

Reward functions and judges are registries like the losses, so plugins add theirs by name.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from rlhf.cluster.resources import check_custom_resources
from rlhf.config import ConfigError
from rlhf.registry import Registry, UnknownNameError

reward_functions = Registry(
    "reward_function", ("prompts", "responses"), returns="list[float], one score per response"
)
register_reward_function = reward_functions.register

judges = Registry("judge", ("prompt", "a", "b"), returns="float, the probability that a beats b")
register_judge = judges.register


@register_reward_function("sentiment")
def sentiment(prompts: list[str], responses: list[str]) -> list[float]:
    """The embedded task's ground truth: P(positive) of each response (see rlhf.task.reward)."""
    from rlhf.task import sentiment_reward

    return sentiment_reward(prompts, responses)


@dataclass
class RewardConfig:
    """Where scores come from; ``kind`` picks which of the fields below is used."""

    kind: Literal["function", "model", "judge"] = "function"
    function: str = "sentiment"  # registry name or package.module:function
    model: str | None = None  # a Hugging Face sequence-classification model directory
    label: int = 0  # which logit of the reward model is the score
    trust_remote_code: bool = False  # the reward model's own code; off unless turned on
    judge: str | None = None  # registry name or package.module:function
    batch_size: int = 64  # reward-model forward batch
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)  # custom ones, e.g. {node_b: 0.01}

    def validate(self) -> None:
        check_custom_resources(self.resources)
        for key in ("num_cpus", "num_gpus"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.kind == "model" and not self.model:
            raise ConfigError("kind 'model' needs model: a sequence-classification model path")
        if self.kind == "judge" and not self.judge:
            raise ConfigError("kind 'judge' needs judge: a judge name or import path")
        registry, name = {
            "function": (reward_functions, self.function),
            "judge": (judges, self.judge),
        }.get(self.kind, (None, None))
        if registry is not None:
            try:
                registry.get(name)
            except (UnknownNameError, ImportError, TypeError, ValueError) as error:
                raise ConfigError(f"{self.kind}: {error}") from None


def judge_scores(
    judge: Callable[[str, str, str], float], prompt: str, responses: list[str]
) -> list[float]:
    """Mean win probability of each response against every other (both orders asked, so a
    judge's position bias cancels)."""
    k = len(responses)
    wins = [0.0] * k
    for i, j in itertools.permutations(range(k), 2):
        p = float(judge(prompt, responses[i], responses[j]))
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"the judge returned {p!r}, not a probability in [0, 1]")
        wins[i] += p
        wins[j] += 1.0 - p
    return [w / (2 * (k - 1)) for w in wins] if k > 1 else [0.5] * k


def flat_scorer(
    reward: Callable[[list[str], list[str]], list[float]],
) -> Callable[[list[str], list[list[str]]], list[list[float]]]:
    """Turns ``f(prompts, responses) -> scores`` into a group scorer (for local use and tests)."""

    def score_groups(prompts: list[str], groups: list[list[str]]) -> list[list[float]]:
        flat = list(
            reward(
                [p for p, g in zip(prompts, groups, strict=True) for _ in g],
                [r for g in groups for r in g],
            )
        )
        total = sum(len(g) for g in groups)
        if len(flat) != total:
            raise ValueError(
                f"the reward function returned {len(flat)} scores for {total} responses"
            )
        out, start = [], 0
        for g in groups:
            out.append(flat[start : start + len(g)])
            start += len(g)
        return out

    return score_groups


class RewardModel:
    """A Hugging Face sequence-classification reward model with its own tokenizer.

    The reward model rarely shares the policy's tokenizer or chat template, so it is given text
    and tokenizes it itself: a plain-text prompt is joined to its response as generated
    (``prompt + response``, with the reward tokenizer's BOS where it adds one); a prompt of chat
    messages becomes ``messages + [assistant: response]`` in the reward model's own chat
    template. The score is logit ``label`` at each text's last token, found by position (a pad
    token equal to EOS cannot hide it).
    """

    def __init__(
        self, path: str, label: int = 0, trust_remote_code: bool = False, batch_size: int = 64
    ) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification

        from rlhf.models.tokenizer import load_tokenizer

        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        heads = [a for a in config.architectures or [] if a.endswith("ForSequenceClassification")]
        if not heads:
            raise ConfigError(
                f"reward.model: {path} is a {', '.join(config.architectures or ['model'])}, not a "
                "sequence-classification reward model (...ForSequenceClassification, its score "
                "head trained); loading it as one would score with a random head. Give a reward "
                "model's directory, or use reward.kind: function"
            )
        if not 0 <= label < config.num_labels:
            raise ConfigError(
                f"reward.label: {label} is not a logit of {path}, which has "
                f"num_labels={config.num_labels}"
            )
        self.tokenizer = load_tokenizer(path, trust_remote_code, key="reward.model")
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, trust_remote_code=trust_remote_code, dtype=torch.float32
        ).eval()
        self.path, self.label, self.batch_size = path, label, batch_size

    def token_ids(self, prompt: str | list[dict[str, str]], response: str) -> list[int]:
        """The reward model's tokens of one prompt and response (see the class docstring)."""
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt + response)["input_ids"])
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(
                f"reward.model: the prompts are chat messages, and the tokenizer of {self.path} "
                "has no chat template to render them with; give it one (tokenizer_config.json "
                "'chat_template') or give prompts as plain text"
            )
        text = self.tokenizer.apply_chat_template(
            [*prompt, {"role": "assistant", "content": response}], tokenize=False
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, prompts: list, responses: list[str]) -> list[float]:
        """One score per (prompt, response)."""
        import torch

        from rlhf.models.hf import pad_right

        sequences = [self.token_ids(p, r) for p, r in zip(prompts, responses, strict=True)]
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(sequences), self.batch_size):
                batch = sequences[start : start + self.batch_size]
                input_ids, attention_mask = pad_right(batch, self.tokenizer.pad_token_id)
                scores += self._last_token_logits(input_ids, attention_mask).tolist()
        return scores

    def _last_token_logits(self, input_ids, attention_mask):
        """Logit ``label`` at each row's last real token ([N] float32)."""
        import torch

        from rlhf.models.hf import positions

        last = attention_mask.sum(dim=1) - 1
        rows = torch.arange(len(input_ids))
        head = getattr(self.model, "score", None)
        if isinstance(head, torch.nn.Linear):  # every decoder reward class of Transformers
            hidden = self.model.base_model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=positions(attention_mask),
                use_cache=False,
            ).last_hidden_state
            return head(hidden[rows, last]).float()[:, self.label]
        # Another head: one unpadded sequence at a time, where the model's own pooling is exact.
        return torch.stack(
            [
                self.model(input_ids=ids[: n + 1][None]).logits[0, self.label].float()
                for ids, n in zip(input_ids, last, strict=True)
            ]
        )

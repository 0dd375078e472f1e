"""The example plugin's loss and reward, worked out by hand; the README shows its code."""

import importlib
import math
import sys
from types import SimpleNamespace

import pytest
import torch

from rlhf.algorithms import RankedLogps, preference_losses
from rlhf.plugins import all_registries
from rlhf.rewards import reward_functions
from rlhf.task import sentiment_score
from tests.examples.conftest import EXAMPLE_PLUGIN, REPO

MODULES = ("rlhf_example_plugin", "rlhf_example_plugin.simpo", "rlhf_example_plugin.rewards")


@pytest.fixture
def plugin(monkeypatch):
    """The plugin's modules imported from the source tree, registering into throwaway copies
    of the registries (the rest of the session never sees them)."""
    all_registries()  # built-ins and installed plugins first, so the copies hold them
    monkeypatch.setattr(preference_losses, "_entries", dict(preference_losses._entries))
    monkeypatch.setattr(reward_functions, "_entries", dict(reward_functions._entries))
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    yield SimpleNamespace(
        simpo=importlib.import_module("rlhf_example_plugin.simpo"),
        rewards=importlib.import_module("rlhf_example_plugin.rewards"),
    )
    for name in MODULES:
        sys.modules.pop(name, None)


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def test_simpo_pairs_by_hand(plugin):
    # Row 0: mean log-probs -4/2 = -2 (chosen), -9/3 = -3 (rejected); beta 2, gamma 1:
    #   margin 2 * (-2 - -3) - 1 = 1, loss -log sigmoid(1) = log(1 + e^-1).
    # Row 1: -6/3 = -2 and -2/1 = -2: equal per token, although the chosen one's sum is lower;
    #   margin 2 * 0 - 1 = -1, loss log(1 + e^1).
    policy = torch.tensor([[-4.0, -9.0], [-6.0, -2.0]], requires_grad=True)
    logps = RankedLogps(policy, None, torch.tensor([[2, 3], [3, 1]]))
    losses = plugin.simpo.simpo_loss(logps, beta=2.0, gamma=1.0)
    torch.testing.assert_close(losses, torch.tensor([softplus(-1.0), softplus(1.0)]))
    # d loss / d logp_w = -sigmoid(-margin) * beta / |y_w|, d loss / d logp_l = +... / |y_l|.
    losses.sum().backward()
    s0, s1 = 1 / (1 + math.e), 1 / (1 + math.exp(-1))  # sigmoid(-1), sigmoid(1)
    expected = torch.tensor([[-s0 * 2 / 2, s0 * 2 / 3], [-s1 * 2 / 3, s1 * 2 / 1]])
    torch.testing.assert_close(policy.grad, expected)


def test_simpo_ranking_is_the_mean_over_its_pairs(plugin):
    # Mean log-probs -2, -3, -3 (column 0 best); beta 1, gamma 0. Pairs (0,1) and (0,2) have
    # margin 1, pair (1,2) margin 0: (2 log(1 + e^-1) + log 2) / 3.
    logps = RankedLogps(torch.tensor([[-2.0, -6.0, -3.0]]), None, torch.tensor([[1, 2, 1]]))
    loss = plugin.simpo.simpo_loss(logps, beta=1.0, gamma=0.0)
    torch.testing.assert_close(loss, torch.tensor([(2 * softplus(-1.0) + math.log(2)) / 3]))


def test_simpo_reads_no_reference_and_says_so(plugin):
    entry = preference_losses.get("simpo")
    assert entry.fn is plugin.simpo.simpo_loss and entry.needs_reference is False
    policy, lengths = torch.tensor([[-3.0, -5.0]]), torch.tensor([[3, 4]])
    with_reference = RankedLogps(policy, torch.tensor([[-100.0, 7.0]]), lengths)
    without = RankedLogps(policy, None, lengths)
    torch.testing.assert_close(entry(with_reference, 0.5), entry(without, 0.5))
    for beta in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="simpo: beta"):
            entry(without, beta)


def test_brief_sentiment_penalises_words_beyond_16(plugin):
    short = "the acting was wonderful ."  # 5 words
    long = " ".join(["the acting was wonderful and the music was great ."] * 2)  # 20 words
    scores = reward_functions.get("brief_sentiment")(["p", "p"], [short, long])
    assert scores == pytest.approx([sentiment_score(short), sentiment_score(long) - 4 * 0.02])


def test_readme_shows_the_whole_example_loss():
    code = (EXAMPLE_PLUGIN / "rlhf_example_plugin" / "simpo.py").read_text()
    readme = (REPO / "README.md").read_text()
    assert f"```python\n{code}```" in readme, "README's SimPO block differs from simpo.py"


def test_readme_lists_every_extension_point():
    section = (REPO / "README.md").read_text().partition("## Write your own algorithm")[2]
    section = section.partition("\n## ")[0]
    missing = [r.kind for r in all_registries() if f"`{r.kind}`" not in section]
    assert not missing, f"README's 'Write your own algorithm' does not list {missing}"

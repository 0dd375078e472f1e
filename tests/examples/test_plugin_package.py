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

MODULES = ("rlhf_example_plugin", "rlhf_example_plugin.rrhf", "rlhf_example_plugin.rewards")


@pytest.fixture
def plugin(monkeypatch):
    """The plugin's modules imported from the source tree, registering into throwaway copies
    of the registries (the rest of the session never sees them)."""
    all_registries()  # built-ins and installed plugins first, so the copies hold them
    monkeypatch.setattr(preference_losses, "_entries", dict(preference_losses._entries))
    monkeypatch.setattr(reward_functions, "_entries", dict(reward_functions._entries))
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    yield SimpleNamespace(
        rrhf=importlib.import_module("rlhf_example_plugin.rrhf"),
        rewards=importlib.import_module("rlhf_example_plugin.rewards"),
    )
    for name in MODULES:
        sys.modules.pop(name, None)


def test_rrhf_pairs_by_hand(plugin):
    # beta 2, sft_weight 0.5.
    # Row 0: mean log-probs -4/2 = -2 (chosen), -9/3 = -3 (rejected): ordered right, no hinge;
    #   loss = 0 + 0.5 * 2.
    # Row 1: -8/4 = -2 (chosen), -1/1 = -1 (rejected): ordered wrong, hinge -1 - -2 = 1;
    #   loss = 2 * 1 + 0.5 * 2.
    policy = torch.tensor([[-4.0, -9.0], [-8.0, -1.0]], requires_grad=True)
    logps = RankedLogps(policy, None, torch.tensor([[2, 3], [4, 1]]))
    losses = plugin.rrhf.rrhf_loss(logps, beta=2.0, sft_weight=0.5)
    torch.testing.assert_close(losses, torch.tensor([0.5 * 2.0, 2.0 * 1.0 + 0.5 * 2.0]))
    # d loss / d logp_w = -sft_weight / |y_w| (row 1 also -beta / |y_w|), d / d logp_l =
    # beta / |y_l| where the hinge is active.
    losses.sum().backward()
    expected = torch.tensor([[-0.5 / 2, 0.0], [(-2.0 - 0.5) / 4, 2.0 / 1]])
    torch.testing.assert_close(policy.grad, expected)


def test_rrhf_ranking_sums_the_hinge_over_its_pairs(plugin):
    # Mean log-probs -2, -1, -3 (column 0 best); beta 1, sft_weight 1. Pairs (0,1): -1 > -2,
    # hinge 1; (0,2): right order, 0; (1,2): right order, 0. NLL of the best: 2.
    logps = RankedLogps(torch.tensor([[-2.0, -2.0, -3.0]]), None, torch.tensor([[1, 2, 1]]))
    loss = plugin.rrhf.rrhf_loss(logps, beta=1.0)
    torch.testing.assert_close(loss, torch.tensor([1.0 + 2.0]))


def test_rrhf_reads_no_reference_and_says_so(plugin):
    entry = preference_losses.get("rrhf")
    assert entry.fn is plugin.rrhf.rrhf_loss and entry.needs_reference is False
    assert entry.ranking is True and entry.uses_nll is True
    policy, lengths = torch.tensor([[-3.0, -5.0]]), torch.tensor([[3, 4]])
    with_reference = RankedLogps(policy, torch.tensor([[-100.0, 7.0]]), lengths)
    without = RankedLogps(policy, None, lengths)
    torch.testing.assert_close(entry(with_reference, 0.5), entry(without, 0.5))
    for beta in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="rrhf: beta"):
            entry(without, beta)


def test_brief_sentiment_penalises_words_beyond_16(plugin):
    short = "the acting was wonderful ."  # 5 words
    long = " ".join(["the acting was wonderful and the music was great ."] * 2)  # 20 words
    scores = reward_functions.get("brief_sentiment")(["p", "p"], [short, long])
    assert scores == pytest.approx([sentiment_score(short), sentiment_score(long) - 4 * 0.02])


def test_readme_shows_the_whole_example_loss():
    code = (EXAMPLE_PLUGIN / "rlhf_example_plugin" / "rrhf.py").read_text()
    readme = (REPO / "README.md").read_text()
    assert f"```python\n{code}```" in readme, "README's RRHF block differs from rrhf.py"


def test_readme_lists_every_extension_point():
    section = (REPO / "README.md").read_text().partition("## Write your own algorithm")[2]
    section = section.partition("\n## ")[0]
    missing = [r.kind for r in all_registries() if f"`{r.kind}`" not in section]
    assert not missing, f"README's 'Write your own algorithm' does not list {missing}"

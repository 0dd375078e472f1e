"""Pictures of a run: reward and KL per round (online DPO, PPO)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_rounds(records: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Mean reward and KL(policy || reference) of held-out samples per round, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r for r in records if "eval/reward/mean" in r]
    x = [r["round"] for r in rounds]
    fig, (ax_reward, ax_kl) = plt.subplots(1, 2, figsize=(10, 4))
    ax_reward.plot(x, [r["eval/reward/mean"] for r in rounds], marker="o", label="held-out")
    if all("train/reward/mean" in r for r in rounds):
        ax_reward.plot(x, [r["train/reward/mean"] for r in rounds], marker=".", label="train")
    ax_reward.set(xlabel="round", ylabel="mean reward", title="reward of samples")
    ax_reward.legend()
    ax_kl.plot(x, [r["eval/kl"] for r in rounds], marker="o", color="tab:red")
    ax_kl.set(xlabel="round", ylabel="KL (nats)", title="KL(policy || reference)")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_reward, ax_kl):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

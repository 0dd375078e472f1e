"""The reference's support: how much reward the SFT model's own samples already hold, measured
without training (the README's "Why", experiment on the reference's support).

    python examples/frontier/support.py examples/frontier/why.yaml [--samples 16]

Two readings, written to ``support.csv`` in the spec's output directory and printed:
  - **best-of-n of the SFT model** on the frontier's held-out prompts: n samples per prompt, the
    one the reward scores highest kept. Its reward is the mean over prompts of that maximum; its
    KL to the SFT model is at most log n - (n - 1) / n nats (exact when no two samples tie), so
    each n is one point of a reward-vs-KL frontier that needs no training at all.
  - **the offline pairs' coverage**: for each training prompt of each pairs file of the spec, the
    best score among its responses (what DPO's chosen side can at most show), and the share of
    prompts whose best response reaches a reward level.
Also the correlation of response length and reward over the SFT samples (does the reward favour
short or long responses?).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from pathlib import Path

import points
import yaml

LEVELS = (0.7, 0.85, 0.95)  # reward levels of the coverage table (PPO's best point: 0.85)


def best_of_n(rewards: list[list[float]], n: int) -> tuple[float, float]:
    """Mean over prompts of the best of each prompt's first ``n`` rewards, and its standard
    error over prompts."""
    best = [max(r[:n]) for r in rewards]
    return statistics.mean(best), statistics.stdev(best) / math.sqrt(len(best))


def best_of_n_kl(n: int) -> float:
    """The bound on KL(best-of-n || reference) of whole responses: log n - (n - 1) / n."""
    return math.log(n) - (n - 1) / n


def coverage(path: Path) -> dict[str, float]:
    """Per prompt of a pairs file, the best score of its responses: mean, and the share of
    prompts whose best reaches each of ``LEVELS``."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["prompt", "score_chosen"]).to_pydict()
    best: dict[str, float] = {}
    for prompt, score in zip(table["prompt"], table["score_chosen"], strict=True):
        best[prompt] = max(score, best.get(prompt, -math.inf))
    values = list(best.values())
    return {
        "prompts": float(len(values)),
        "pairs": float(len(table["prompt"])),
        "best_mean": statistics.mean(values),
        **{f"best>={level:g}": sum(v >= level for v in values) / len(values) for level in LEVELS},
    }


def plot_with_runs(best: list[dict], out: Path, report: str) -> None:
    """support.png: the spec's measured points (``<report>_detail.csv``, if measured) with
    best-of-n of the SFT model at its KL bound, as one more algorithm of the figure."""
    detail = out / f"{report}_detail.csv"
    rows = points.read_rows(detail) if detail.exists() else []
    rows += [
        {
            "algorithm": "best-of-n of SFT (KL bound)",
            "kl": b["kl_bound"],
            "kl_stderr": 0.0,
            "reward": b["reward"],
            "reward_stderr": b["stderr"],
        }
        for b in best
    ]
    points.plot(rows, out / "support.png", "reward vs KL, with best-of-n of the SFT model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a frontier YAML (its output_dir, eval and data)")
    parser.add_argument("--samples", type=int, default=16, help="SFT samples per prompt")
    args = parser.parse_args()
    spec = yaml.safe_load(Path(args.config).read_text())
    out = Path(spec["output_dir"])

    from rlhf.driver.common import resolve_model_path
    from rlhf.rewards import sentiment
    from rlhf.schema import ModelConfig
    from rlhf.task import make_prompts
    from rlhf.task.model import load_tokenizer

    ev = spec["eval"]
    sft = resolve_model_path(ModelConfig())
    tokenizer = load_tokenizer(Path(sft))
    prompts = make_prompts(ev["prompts"], seed=spec["seed"] + 1, split="eval")
    settings = points.EvalSettings(args.samples, ev["max_tokens"], seed=spec["seed"])
    samples = points.sample(points.load_policy(sft, None), tokenizer, prompts, settings)
    rewards = sentiment([prompts[i] for i in samples.prompt_index], samples.texts)
    by_prompt: list[list[float]] = [[] for _ in prompts]
    for i, reward in zip(samples.prompt_index, rewards, strict=True):
        by_prompt[i].append(reward)

    rows = []
    n = 1
    while n <= args.samples:
        reward, stderr = best_of_n(by_prompt, n)
        rows.append({"n": n, "kl_bound": best_of_n_kl(n), "reward": reward, "stderr": stderr})
        n *= 2
    with (out / "support.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot_with_runs(rows, out, spec.get("report", "frontier"))
    print(f"best-of-n of the SFT model ({len(prompts)} held-out prompts x {args.samples}):")
    print("| n | KL <= | reward |\n|---|---|---|")
    for row in rows:
        print(f"| {row['n']} | {row['kl_bound']:.2f} | {row['reward']:.3f} ± {row['stderr']:.3f} |")
    shares = ", ".join(
        f">= {lv:g}: {sum(r >= lv for r in rewards) / len(rewards):.1%}" for lv in LEVELS
    )
    print(f"single SFT samples with reward {shares}")
    lengths = [len(r) for r in samples.response_ids]
    print(
        f"length-reward correlation over SFT samples: {statistics.correlation(lengths, rewards):.3f}"
    )

    print("\ncoverage of the offline pairs (per training prompt, its best response):")
    for key, data in spec.get("data", {}).items():
        path = out / data["file"]
        if path.exists() and "all_pairs" in " ".join(data["overrides"]):
            found = coverage(path)
            print(f"{key}: " + ", ".join(f"{k} {v:.4g}" for k, v in found.items()))


if __name__ == "__main__":
    main()

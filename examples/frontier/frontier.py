"""Reward vs KL(policy || reference) for offline DPO, online DPO and PPO: the DPO paper's
central experiment (its Figure 2, left), in miniature on the embedded sentiment task.

    python examples/frontier/frontier.py examples/frontier/frontier.yaml [--only ppo]

Runs every algorithm at every value of its KL knob (a finished run is reused, so the script
can be interrupted and started again), evaluates each final policy and the SFT model on the
same held-out prompts, and writes ``frontier.csv``, ``frontier.json`` and ``frontier.png``
into the output directory, with a table on the console.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
from pathlib import Path

import ray
import yaml

from rlhf.config import load_config
from rlhf.driver.common import ActorScope, resolve_model_path
from rlhf.driver.evaluate import evaluate_policies
from rlhf.driver.loops import BUILTIN_LOOPS, get_loop
from rlhf.schema import ModelConfig, SamplingConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="the frontier YAML (see examples/frontier/frontier.yaml)")
    parser.add_argument("--only", nargs="*", help="run only these algorithms")
    parser.add_argument("--report-only", action="store_true", help="redraw from frontier.json")
    args = parser.parse_args()
    spec = yaml.safe_load(Path(args.config).read_text())
    out = Path(spec["output_dir"])
    if args.report_only:
        report(json.loads((out / "frontier.json").read_text()), out)
        return
    out.mkdir(parents=True, exist_ok=True)
    for module in BUILTIN_LOOPS:
        importlib.import_module(module)
    sft = resolve_model_path(ModelConfig())
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        pairs = make_pairs(spec, out)
        policies = {("sft", 0.0): sft}
        for name, algo in spec["algorithms"].items():
            if args.only and name not in args.only:
                continue
            for value in algo["values"]:
                policies[(name, value)] = train(name, algo, value, spec, out, pairs)
        results = evaluate(spec, policies, sft)
    finally:
        ray.shutdown()
    report(results, out)


def make_pairs(spec: dict, out: Path) -> Path:
    """The offline DPO data: SFT samples labelled by the reward (made once)."""
    from rlhf.driver import make_data

    path = out / "pairs.parquet"
    if not path.exists():
        overrides = [*spec["data"]["overrides"], f"output={path}", f"seed={spec['seed']}"]
        make_data.run(load_config(make_data.MakeDataConfig, spec["data"]["config"], overrides))
    return path


def train(name: str, algo: dict, value: float, spec: dict, out: Path, pairs: Path) -> str:
    """One run of one algorithm at one knob value; returns its final model directory."""
    loop, cfg = job(name, algo, value, spec, out, pairs)
    model = Path(cfg.output_dir) / "model"
    if not model.exists():  # else finished earlier
        resume = (Path(cfg.output_dir) / "metrics.jsonl").exists()  # interrupted: continue it
        loop(cfg, resume=resume)
    return str(model)


def job(name: str, algo: dict, value: float, spec: dict, out: Path, pairs: Path):
    """The training loop and its validated config for one algorithm at one knob value."""
    run_dir = out / f"{name}_{algo['knob'].split('.')[-1]}_{value}"
    overrides = [
        *algo.get("overrides", []),
        f"{algo['knob']}={value}",
        f"output_dir={run_dir}",
        f"seed={spec['seed']}",
    ]
    if name == "dpo":
        overrides.append(f"data.path={pairs}")
    raw = yaml.safe_load(Path(algo["config"]).read_text())
    loop = get_loop(raw["algorithm"])
    return loop, load_config(loop.metadata["config"], algo["config"], overrides)


def evaluate(spec: dict, policies: dict, sft: str) -> list[dict]:
    from rlhf.task import make_prompts

    ev = spec["eval"]
    prompts = make_prompts(ev["prompts"], seed=spec["seed"] + 1, split="eval")
    sampling = SamplingConfig(n=ev["samples_per_prompt"], max_tokens=ev["max_tokens"])
    scope = ActorScope()
    try:
        named = {f"{name} {value}": path for (name, value), path in policies.items()}
        scores = evaluate_policies(named, sft, prompts, sampling, scope, seed=spec["seed"])
    finally:
        scope.close()
    return [
        {"algorithm": name, "knob": value, **scores[f"{name} {value}"]}
        for (name, value) in policies
    ]


def report(results: list[dict], out: Path) -> None:
    with (out / "frontier.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)
    (out / "frontier.json").write_text(json.dumps(results, indent=2))
    print(f"\n{'algorithm':<11} {'beta':>5}  {'reward':>13}  {'KL (nats)':>13}  length")
    for r in results:
        print(
            f"{r['algorithm']:<11} {r['knob']:>5}  {r['reward']:.3f} ± {r['reward_sem']:.3f}  "
            f"{r['kl']:6.2f} ± {r['kl_sem']:4.2f}  {r['response_length']:6.1f}"
        )
    plot(results, out / "frontier.png")
    print(f"\nwritten: {out / 'frontier.csv'}, {out / 'frontier.png'}")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name in dict.fromkeys(r["algorithm"] for r in results):
        rows = sorted((r for r in results if r["algorithm"] == name), key=lambda r: r["kl"])
        ax.errorbar(
            [r["kl"] for r in rows],
            [r["reward"] for r in rows],
            xerr=[r["kl_sem"] for r in rows],
            yerr=[r["reward_sem"] for r in rows],
            marker="o",
            capsize=2,
            label=name,
        )
        for r in rows:
            if name != "sft":
                ax.annotate(f"{r['knob']}", (r["kl"], r["reward"]), fontsize=7)
    ax.set_xscale("symlog", linthresh=1.0)  # KL spans two orders of magnitude
    ax.set(
        xlabel="KL(policy || SFT reference), nats per response (symlog)",
        ylabel="mean reward on held-out prompts",
        title="reward vs KL frontier (embedded sentiment task)",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

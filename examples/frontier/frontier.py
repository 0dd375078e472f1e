"""Reward vs KL(policy || SFT reference) along training, for the DPO paper's algorithms: its
Figure 2 (left), in miniature on the embedded sentiment task.

    python examples/frontier/frontier.py examples/frontier/frontier.yaml [--only dpo ppo]
    python examples/frontier/frontier.py examples/frontier/frontier.yaml --report-only

Trains every setting of every algorithm in the YAML (a finished run is reused, so the script can
be stopped and started again), keeping a checkpoint every few steps or rounds; then every
checkpoint, and the SFT model, samples the same held-out prompts (``points.py``: Hugging Face
on this process, no Ray) and gives one point (KL, reward) with standard errors. Writes into the
output directory: ``frontier.csv`` (algorithm, setting, step, kl, kl_stderr, reward,
reward_stderr), ``frontier_detail.csv`` (plus the summed-k1 KL with its spread and the mean
response length), ``frontier.png`` and a table of the reward each algorithm's frontier reaches
at KL <= 2, 5 and 10. A YAML with ``report: <name>`` (``why.yaml``) writes ``<name>.csv`` and
so on instead, so it can share the main sweep's output directory, data and finished runs.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

import points
import yaml

KL_BUDGETS = (2.0, 5.0, 10.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="the frontier YAML (see examples/frontier/frontier.yaml)")
    parser.add_argument("--only", nargs="*", help="run only these algorithms")
    parser.add_argument("--report-only", action="store_true", help="redraw frontier_detail.csv")
    parser.add_argument(
        "--no-train", action="store_true", help="evaluate the checkpoints the runs have so far"
    )
    parser.add_argument(
        "--no-eval", action="store_true", help="train only (measure later with --no-train)"
    )
    args = parser.parse_args()
    spec = yaml.safe_load(Path(args.config).read_text())
    out = Path(spec["output_dir"])
    name = spec.get("report", "frontier")  # the outputs' names: <name>.csv, .png, _detail.csv
    if args.report_only:
        report(points.read_rows(out / f"{name}_detail.csv"), out, name)
        return
    out.mkdir(parents=True, exist_ok=True)
    runs = existing_runs(spec, out, args.only) if args.no_train else train_all(spec, out, args.only)
    if not args.no_eval:
        report(evaluate(spec, existing_runs(spec, out, None) | runs, out), out, name)


def existing_runs(spec: dict, out: Path, only: list[str] | None) -> dict[tuple[str, str], Path]:
    """{(algorithm, setting): run directory} of the runs that have a checkpoint already."""
    runs = {}
    for name, algo in spec["algorithms"].items():
        for label, _ in settings_of(algo):
            run_dir = run_dir_of(out, name, label)
            if (not only or name in only) and points.checkpoints(run_dir):
                runs[(name, label)] = run_dir
    return runs


def run_dir_of(out: Path, name: str, label: str) -> Path:
    """Where one setting of one algorithm trains."""
    return out / "runs" / f"{name}_{label.replace(' ', '_').replace('=', '')}"


def settings_of(algo: dict) -> list[tuple[str, list[str]]]:
    """(label, overrides) of each setting of an algorithm's sweep, e.g. ("beta=0.1", [...])."""
    return [
        (" ".join(f"{k.split('.')[-1]}={v}" for k, v in setting.items()),
        [f"{k}={v}" for k, v in setting.items()])
        for setting in algo["sweep"]
    ]  # fmt: skip


def job(name: str, algo: dict, label: str, overrides: list[str], spec: dict, out: Path):
    """The training loop and its validated config for one setting of one algorithm."""
    from rlhf.config import load_config
    from rlhf.driver.loops import get_loop

    run_dir = run_dir_of(out, name, label)
    data = algo.get("data")
    overrides = [
        f"seed={spec['seed']}",  # a setting may name its own (a second seed of a setting)
        *_flat(algo.get("overrides", [])),
        *overrides,
        *([f"data.path={out / spec['data'][data]['file']}"] if data else []),
        "keep_checkpoints=1000",  # every checkpoint is a point of the frontier
        f"output_dir={run_dir}",
    ]
    raw = yaml.safe_load(Path(algo["config"]).read_text())
    loop = get_loop(raw["algorithm"])
    return loop, load_config(loop.metadata["config"], algo["config"], overrides)


def _flat(items: list) -> list[str]:
    """Overrides with YAML aliases expanded ([*offline, x] reads as a nested list)."""
    return [x for item in items for x in (_flat(item) if isinstance(item, list) else [item])]


def train_all(spec: dict, out: Path, only: list[str] | None) -> dict[tuple[str, str], Path]:
    """Trains every setting (unless finished); returns {(algorithm, setting): run directory}."""
    import ray

    from rlhf.driver.loops import BUILTIN_LOOPS

    for module in BUILTIN_LOOPS:
        importlib.import_module(module)
    runs = {}
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        make_data(spec, out, only)
        for name, algo in spec["algorithms"].items():
            if only and name not in only:
                continue
            for label, overrides in settings_of(algo):
                loop, cfg = job(name, algo, label, overrides, spec, out)
                run_dir = Path(cfg.output_dir)
                if not (run_dir / "model").exists():  # else finished earlier
                    started = time.perf_counter()
                    loop(cfg, resume=(run_dir / "metrics.jsonl").exists())
                    took = time.perf_counter() - started
                    print(f"{name} {label}: trained in {took:.0f} s", flush=True)
                runs[(name, label)] = run_dir
    finally:
        ray.shutdown()
    return runs


def make_data(spec: dict, out: Path, only: list[str] | None = None) -> None:
    """The offline data sets the algorithms (those in ``only``, if given) train on: SFT samples
    labelled by the reward, the paper's way (each made once)."""
    from rlhf.config import load_config
    from rlhf.driver import make_data as make

    needed = {a.get("data") for n, a in spec["algorithms"].items() if not only or n in only}
    for key, data in spec["data"].items():
        path = out / data["file"]
        if key in needed and not path.exists():
            overrides = [*data["overrides"], f"output={path}", f"seed={spec['seed']}"]
            started = time.perf_counter()
            make.run(load_config(make.MakeDataConfig, data["config"], overrides))
            print(f"made {path} in {time.perf_counter() - started:.0f} s", flush=True)


def evaluate(spec: dict, runs: dict[tuple[str, str], Path], out: Path) -> list[dict]:
    """One row per checkpoint of every run, and one for the SFT model, on the same prompts."""
    from rlhf.driver.common import resolve_model_path
    from rlhf.rewards import sentiment
    from rlhf.schema import ModelConfig
    from rlhf.task import make_prompts
    from rlhf.task.model import load_tokenizer

    ev = spec["eval"]
    sft = resolve_model_path(ModelConfig())
    prompts = make_prompts(ev["prompts"], seed=spec["seed"] + 1, split="eval")
    settings = points.EvalSettings(ev["samples_per_prompt"], ev["max_tokens"], seed=spec["seed"])
    return evaluate_runs(runs, sft, load_tokenizer(Path(sft)), prompts, sentiment, settings)


def evaluate_runs(runs, reference_dir, tokenizer, prompts, reward_fn, settings) -> list[dict]:
    """The rows of ``runs`` ({(algorithm, setting): run dir}) and of the reference itself."""
    reference = points.load_policy(reference_dir, None)
    sft = points.measure(reference, reference, tokenizer, prompts, reward_fn, settings)
    rows = [{"algorithm": "sft", "setting": "-", "step": 0, **sft}]
    for (name, label), run_dir in runs.items():
        started = time.perf_counter()
        rows += points.evaluate_run(
            name, label, run_dir, reference, reference_dir, tokenizer, prompts, reward_fn, settings
        )
        print(f"evaluated {name} {label} in {time.perf_counter() - started:.0f} s", flush=True)
    return rows


def report(rows: list[dict], out: Path, name: str = "frontier") -> None:
    """<name>.csv, <name>_detail.csv, <name>.png, and the table on the console."""
    points.write_csv(rows, out / f"{name}.csv")
    points.write_csv(rows, out / f"{name}_detail.csv", points.DETAIL_COLUMNS)
    points.plot(rows, out / f"{name}.png")
    print(table(rows))
    print(f"\nwritten: {out / f'{name}.csv'}, {out / f'{name}.png'}")


def table(rows: list[dict]) -> str:
    """Markdown: the best reward of each algorithm's points with KL <= each budget."""
    head = "| algorithm | " + " | ".join(f"KL <= {b:g}" for b in KL_BUDGETS) + " | points |"
    lines = [head, "|" + "---|" * (len(KL_BUDGETS) + 2)]
    for name in dict.fromkeys(r["algorithm"] for r in rows):
        mine = [r for r in rows if r["algorithm"] == name]
        cells = []
        for budget in KL_BUDGETS:
            value = points.reward_at_kl(mine, budget)
            cells.append("—" if value is None else f"{value:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(mine)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

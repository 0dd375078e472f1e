"""PPO / GRPO iteration time by phase, generation's share, samples/s, and TRL's GRPOTrainer.

    python benchmarks/ppo.py                 # GAE and GRPO, staleness 0 and 1, TRL twice; 6 x 64
    python benchmarks/ppo.py --quick         # 3 x 32 prompts
    python benchmarks/ppo.py --estimators grpo --staleness 1 --trl default
    python benchmarks/ppo.py --estimators grpo --set trainer.num_cpus_per_rank=2  # 2 threads

Every job runs in its own process. Ours: ``rlhf train configs/ppo.yaml`` (vLLM samplers and
reference, DeepSpeed policy and critic) on the embedded task; per-phase times come from its
``metrics.jsonl``, the first iteration (engine warm-up) is reported apart. The peer: TRL's
``GRPOTrainer`` on the same model, prompts, reward, K, completion length, learning rate and
number of policy-gradient passes per sample (our PPO epochs = TRL's ``num_iterations``), with
its KL term on (beta > 0, so it runs a reference model as we do). TRL runs twice: at its
defaults (gradient checkpointing on) and without gradient checkpointing. Ours runs with
``rounds.max_staleness`` 0 (synchronous) and 1 (the next iteration sampled while this one
trains). Ratios compare samples trained on per second, start-up excluded on both sides and
reported on its own line: ours over the phases of its steady iterations (after the first,
and at staleness k without the last k, which sample nothing ahead; every phase of the round,
the sync probe included), and over their wall time, which adds the driver's logging and
the per-iteration checkpoint (TRL, ``save_strategy="no"``, writes none).

CPU: every job also counts the CPU seconds (user + system) of its process and all its
descendants (for ours the local Ray it starts: GCS, raylet, every actor), by role (the driver,
each actor class, Ray's own processes), over the same steady iterations (TRL: its train phase).
Per iteration, that work perfectly packed onto the machine's cores gives the packing bound
(samples / (core-s / cores)): the most samples/s a job doing that work can reach there, and,
over TRL's measured samples/s, the best ratio ours can reach without doing less work. The
tables print at the end and go to ``<workdir>/<stamp>-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    DRIVER,
    RAY_IDLE,
    RAY_SYSTEM,
    Phases,
    cpu_intervals,
    emit,
    machine_cpu,
    packing_bound,
    print_table,
    run_job,
    sample_tree_cpu,
    trl_task,
)

PHASES = ("generate", "score", "reference", "experience", "train", "sync")  # the table's columns


def ours_job(job: dict[str, Any]) -> dict[str, Any]:
    """Our PPO loop with the job's estimator; per-iteration phase times from its metrics."""
    from rlhf.config import load_config
    from rlhf.driver import ppo
    from rlhf.run_dir import read_metrics

    start = time.perf_counter()
    overrides = [
        f"output_dir={job['out']}",
        f"model.path={job['model']}",
        f"ppo.advantage={job['advantage']}",
        f"ppo.iterations={job['iterations']}",
        f"ppo.prompts_per_iteration={job['prompts']}",
        f"ppo.epochs={job['epochs']}",
        f"ppo.minibatch_size={job['minibatch']}",
        f"samplers.sampling.n={job['k']}",
        f"samplers.sampling.max_tokens={job['max_tokens']}",
        f"trainer.lr={job['lr']}",
        "ppo.eval_prompts=8",  # the held-out check stays in the loop, kept small
        f"rounds.max_staleness={job['staleness']}",
        *job["overrides"],
    ]
    if job["staleness"]:
        overrides.append("samplers.engine.sleep_when_idle=false")
    starts: list[float] = []  # wall clock at each round's start (the next one's ends it)
    cpu, machine = [], []  # the job's processes' and the machine's CPU at the same moments

    def at_round_start(event) -> None:  # the final evaluation ends the last round
        if event.phase in ("round", "final eval") and not event.ended:
            starts.append(time.perf_counter())
            cpu.append(sample_tree_cpu())
            machine.append(machine_cpu())

    cfg = load_config(ppo.PPOConfig, "configs/ppo.yaml", overrides)
    run_dir = ppo.run(cfg, hooks=[at_round_start])
    total = time.perf_counter() - start
    records = read_metrics(run_dir)
    iterations = [r for r in records if "round" in r]  # one per iteration (steps have none)
    (final,) = [r for r in records if "final/reward/mean" in r]
    walls = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    return {
        "total": total,
        "iterations": iterations,
        "walls": walls,
        "cpu": cpu_intervals(cpu, machine),  # one per wall
        "staleness": job["staleness"],
        "final_reward": final["final/reward/mean"],  # the weights the run ends with
    }


def trl_job(job: dict[str, Any]) -> dict[str, Any]:
    """TRL's GRPOTrainer on the same task; returns its timings."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    out = Path(job["out"])
    num_prompts = job["iterations"] * job["prompts"]
    tokenizer, prompts, sentiment = trl_task(job["model"], num_prompts)

    args = GRPOConfig(
        output_dir=str(out / "run"),
        per_device_train_batch_size=job["minibatch"],
        num_generations=job["k"],
        num_iterations=job["epochs"],
        max_completion_length=job["max_tokens"],
        learning_rate=job["lr"],
        beta=0.05,
        temperature=1.0,
        # TRL's own default is on; passed either way so that the run says what it measured.
        gradient_checkpointing=job["gradient_checkpointing"],
        num_train_epochs=1,
        bf16=False,
        report_to="none",
        logging_steps=1000,
        save_strategy="no",
    )
    phases = Phases()
    start = time.perf_counter()
    with phases("start-up"):
        trainer = GRPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(job["model"]),
            reward_funcs=sentiment,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": prompts}),
            processing_class=tokenizer,
        )
    # This process's CPU seconds in TRL's steps (it starts no other process): generation (HF
    # generate), the reward, and all of preparing a batch, which adds old and reference log-probs.
    cpu_phases = Phases(clock=time.process_time)
    trainer._generate = cpu_phases.timed("generate", trainer._generate)
    trainer._calculate_rewards = cpu_phases.timed("score", trainer._calculate_rewards)
    trainer._generate_and_score_completions = cpu_phases.timed(
        "batch", trainer._generate_and_score_completions
    )
    cpu, machine = [sample_tree_cpu()], [machine_cpu()]
    with phases("train"):
        trainer.train()
    cpu.append(sample_tree_cpu())
    machine.append(machine_cpu())
    total = time.perf_counter() - start
    return {
        "seconds": phases.seconds,
        "total": total,
        "samples": num_prompts * job["k"],
        "cpu": cpu_intervals(cpu, machine)[0],  # over the train phase, as its samples/s
        "cpu_phases": cpu_phases.seconds,
    }


def round_seconds(record: dict[str, Any]) -> float:
    """The sum of every phase of a round (``time/...``; ``time/generate_share`` is a share)."""
    return sum(v for k, v in record.items() if k.startswith("time/") and k != "time/generate_share")


def summarize(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """Steady-state numbers of one of our runs: the iterations after the first, less the last
    ``staleness`` ones, which sample nothing ahead (:func:`steady_window`; one iteration, one
    wall time and one CPU interval each)."""
    its, walls, cpu = result["iterations"], result["walls"], result["cpu"]
    window = steady_window(len(its), result["staleness"])
    steady = its[window]
    per_iter = {p: statistics.mean(r.get(f"time/{p}", 0.0) for r in steady) for p in PHASES}
    iteration_s = statistics.mean(round_seconds(r) for r in steady)
    per_iter["other"] = iteration_s - sum(per_iter.values())  # sync probe, mismatch KL
    wall_s = statistics.mean(walls[window])
    run_s = sum(round_seconds(r) for r in its)
    samples = result["samples_per_iteration"] * len(its)
    return {
        "name": name,
        "per_iter": per_iter,
        "iteration_s": iteration_s,
        "wall_s": wall_s,
        "first_iteration_s": round_seconds(its[0]),
        "startup_s": result["total"] - sum(walls),
        "samples_per_s": samples / run_s,
        "steady_samples_per_s": result["samples_per_iteration"] / iteration_s,
        "wall_samples_per_s": result["samples_per_iteration"] / wall_s,
        "generate_share": per_iter["generate"] / iteration_s,
        "reward": (its[0]["eval/reward/mean"], result["final_reward"]),  # SFT -> final weights
        "cpu": cpu_per_iteration(cpu[window], len(cpu[window])),
    }


def steady_window(intervals: int, staleness: int) -> slice:
    """The steady iterations (round-start intervals) the report counts: those after the first,
    less the last ``staleness``: the last rounds sample nothing ahead (there is no next round),
    so their time and CPU would leave generation out. All where that leaves none."""
    return slice(1, intervals - staleness) if intervals - staleness > 1 else slice(0, intervals)


def cpu_per_iteration(intervals: list[dict[str, Any]], iterations: float) -> dict[str, Any]:
    """Core-seconds per iteration by role, summed over ``intervals`` (``cpu_intervals``) and
    divided by ``iterations``; how many processes appeared and exited meanwhile; and per
    iteration the machine's CPU seconds outside the job (``others``) and stolen (``steal``)."""
    roles: dict[str, float] = {}
    for interval in intervals:
        for role, seconds in interval["cpu"].items():
            roles[role] = roles.get(role, 0.0) + seconds / iterations
    return {
        "roles": roles,
        "total": sum(roles.values()),
        "appeared": sum(i["appeared"] for i in intervals),
        "exited": sum(i["exited"] for i in intervals),
        "others": sum(i.get("others", 0.0) for i in intervals) / iterations,
        "steal": sum(i.get("steal", 0.0) for i in intervals) / iterations,
    }


def cpu_rows(
    ours: list[dict], trls: dict[str, dict], samples_per_iteration: int, cores: int
) -> list[dict[str, Any]]:
    """Per job: core-seconds per iteration of ``samples_per_iteration`` samples (by role), the
    wall seconds they took, the measured samples/s and the packing bound on ``cores`` cores.

    Ours: the iterations of :func:`steady_window`, CPU and samples/s over their wall time
    (between round starts: it includes the driver's logging and checkpoint). TRL: its train
    phase (the window of its samples/s), scaled to ``samples_per_iteration`` samples.
    """
    rows = []
    for o in ours:
        wall_s = o["wall_s"]
        rows.append({"name": o["name"], "cpu": o["cpu"], "wall_s": wall_s})
        rows[-1]["samples_per_s"] = samples_per_iteration / wall_s
    for label, trl in trls.items():
        per_iteration = samples_per_iteration / trl["samples"]  # its train phase in iterations
        rows.append(
            {
                "name": f"TRL {label}",
                "cpu": cpu_per_iteration([trl["cpu"]], 1 / per_iteration),
                "wall_s": trl["seconds"]["train"] * per_iteration,
                "samples_per_s": trl["samples"] / trl["seconds"]["train"],
                "phases": trl_phases(trl, per_iteration),
            }
        )
    for row in rows:
        total = row["cpu"]["total"]
        row["per_sample_ms"] = 1000 * total / samples_per_iteration
        row["busy_cores"] = total / row["wall_s"]
        row["bound"] = packing_bound(samples_per_iteration, total, cores)
    return rows


def trl_phases(trl: dict[str, Any], per_iteration: float) -> dict[str, float]:
    """TRL's CPU seconds per iteration by phase: generate, score, old and reference log-probs
    (the rest of preparing a batch), and train (the rest of its train phase)."""
    cpu = trl["cpu_phases"]
    generate, score, batch = cpu["generate"], cpu["score"], cpu["batch"]
    phases = {
        "generate": generate,
        "score": score,
        "old + reference log-probs": batch - generate - score,
        "train": sum(trl["cpu"]["cpu"].values()) - batch,
    }
    return {name: seconds * per_iteration for name, seconds in phases.items()}


def report_cpu(rows: list[dict[str, Any]], cores: int) -> None:
    """The CPU tables: core-seconds per iteration by role, and each job's packing bound."""
    totals: dict[str, float] = {}
    for row in rows:
        for role, seconds in row["cpu"]["roles"].items():
            totals[role] = totals.get(role, 0.0) + seconds
    last = (RAY_SYSTEM, RAY_IDLE)
    roles = [DRIVER] * (DRIVER in totals) + sorted(
        (r for r in totals if r not in (DRIVER, *last)), key=lambda r: -totals[r]
    )
    roles += [r for r in last if r in totals]
    print(
        "\nCPU per iteration (core-seconds, user + system, of the job's process and all its "
        "descendants; ours: steady iterations, TRL: its train phase per as many samples)"
    )
    print_table(
        ["job", *roles, "total", "ms/sample"],
        [
            [
                row["name"],
                *[f"{row['cpu']['roles'].get(r, 0.0):.3f}" for r in roles],
                f"{row['cpu']['total']:.3f}",
                f"{row['per_sample_ms']:.2f}",
            ]
            for row in rows
        ],
    )
    trls = [row for row in rows if row["name"].startswith("TRL ")]
    if trls:
        names = list(trls[0]["phases"])
        print("\nTRL's CPU per iteration by phase (core-seconds; its one process)")
        print_table(
            ["job", *names],
            [[t["name"], *[f"{t['phases'][n]:.3f}" for n in names]] for t in trls],
        )
    print(
        f"\nPacking bound: samples/s if that CPU work ran on {cores} cores with none idle "
        "(samples / (core-s / cores)); others: core-s per iteration the machine spent outside "
        "the job, stolen: by the hypervisor (both should be near 0). Ours over its steady "
        "iterations less the last max_staleness (they sample nothing ahead), wall time "
        "between round starts; TRL over its train phase"
    )
    print_table(
        ["job", "wall s/iter", "busy cores", "others", "stolen", "wall samples/s", "bound"]
        + [f"bound / {t['name']}" for t in trls],
        [
            [
                row["name"],
                f"{row['wall_s']:.2f}",
                f"{row['busy_cores']:.2f}",
                f"{row['cpu']['others']:.3f}",
                f"{row['cpu']['steal']:.3f}",
                row["samples_per_s"],
                row["bound"],
                *[f"{row['bound'] / t['samples_per_s']:.2f}x" for t in trls],
            ]
            for row in rows
        ],
    )
    for row in rows:
        if row["cpu"]["exited"]:
            print(
                f"{row['name']}: {row['cpu']['exited']} processes exited during the measured "
                f"window ({row['cpu']['appeared']} appeared); their last CPU is not counted"
            )


def report(ours: list[dict], trls: dict[str, dict]) -> None:
    print(
        "\nPPO iteration by phase (mean seconds over the steady iterations: after the first, "
        "less the last k at staleness k)"
    )
    print_table(
        ["run", *PHASES, "other", "iteration", "wall", "gen share", "samples/s", "wall samples/s"],
        [
            [
                o["name"],
                *[f"{o['per_iter'][p]:.3f}" for p in (*PHASES, "other")],
                f"{o['iteration_s']:.2f}",
                f"{o['wall_s']:.2f}",
                f"{o['generate_share']:.0%}",
                o["steady_samples_per_s"],
                o["wall_samples_per_s"],
            ]
            for o in ours
        ],
    )
    for o in ours:
        print(
            f"{o['name']}: start-up {o['startup_s']:.1f} s, first iteration "
            f"{o['first_iteration_s']:.1f} s (engine warm-up), all iterations "
            f"{o['samples_per_s']:.1f} samples/s, held-out reward "
            f"{o['reward'][0]:.3f} -> {o['reward'][1]:.3f} (final weights)"
        )
    for label, trl in trls.items():
        trl_rate = trl["samples"] / trl["seconds"]["train"]
        print(
            f"TRL GRPOTrainer ({label}): start-up {trl['seconds']['start-up']:.1f} s, train "
            f"{trl['seconds']['train']:.1f} s, {trl_rate:.1f} samples/s"
        )
        for o in ours:
            print(
                f"  ratio {o['name']} / TRL {label}, samples/s: steady iterations "
                f"{o['steady_samples_per_s'] / trl_rate:.2f}x (wall, with checkpoints "
                f"{o['wall_samples_per_s'] / trl_rate:.2f}x), all iterations "
                f"{o['samples_per_s'] / trl_rate:.2f}x (the first overlaps the actors' start-up)"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=64, help="prompts per iteration")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--minibatch", type=int, default=64, help="samples per optimizer step")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--estimators", default="gae,grpo")
    parser.add_argument("--staleness", default="0,1", help="rounds.max_staleness values")
    parser.add_argument(
        "--trl", default="default,no-gc", help="TRL runs: default, no-gc (no checkpointing)"
    )
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for our jobs (repeatable), e.g. trainer.num_cpus_per_rank=2",
    )
    parser.add_argument("--quick", action="store_true", help="3 x 32 prompts")
    parser.add_argument("--workdir", help="runs and logs (default: a new temp dir)")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # internal: run one job and exit
    args = parser.parse_args(argv)
    if args.job:
        job = json.loads(args.job)
        emit({"ours": ours_job, "trl": trl_job}[job["kind"]](job))
        return
    if args.quick:
        args.iterations, args.prompts = 3, 32
    from rlhf.task import build_tiny_model

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ppo-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    common = {
        "model": str(build_tiny_model()),
        "iterations": args.iterations,
        "prompts": args.prompts,
        "k": args.k,
        "epochs": args.epochs,
        "minibatch": args.minibatch,
        "max_tokens": args.max_tokens,
        "lr": args.lr,
    }
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # TRL first: its jobs are short, and a run cut short still has the peer's numbers.
    trls = {}
    for label in [] if args.no_trl else args.trl.split(","):
        out = workdir / f"{stamp}-trl-grpo-{label}"
        job = {**common, "kind": "trl", "out": str(out), "gradient_checkpointing": label != "no-gc"}
        trls[label] = run_job(Path(__file__), job, workdir / f"{out.name}.log")
    ours = []
    for advantage in args.estimators.split(","):
        for staleness in (int(k) for k in args.staleness.split(",")):
            out = workdir / f"{stamp}-ours-{advantage}-s{staleness}"
            job = {**common, "kind": "ours", "advantage": advantage, "out": str(out)}
            job |= {"staleness": staleness, "overrides": args.set}
            result = run_job(Path(__file__), job, workdir / f"{out.name}.log")
            result["samples_per_iteration"] = args.prompts * args.k
            ours.append(summarize(f"ours {advantage} staleness {staleness}", result))
    report(ours, trls)
    cores = os.cpu_count() or 1
    rows = cpu_rows(ours, trls, args.prompts * args.k, cores)
    report_cpu(rows, cores)
    (workdir / f"{stamp}-cpu.json").write_text(json.dumps({"cores": cores, "jobs": rows}, indent=1))
    print(f"\nlogs and runs: {workdir}")


if __name__ == "__main__":
    main()

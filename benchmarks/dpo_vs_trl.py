"""Offline DPO, this framework vs TRL's DPOTrainer: same tiny model, data, batch and pairs.

    .venv/bin/python benchmarks/dpo_vs_trl.py                 # 2,000 pairs, 16 per step
    .venv/bin/python benchmarks/dpo_vs_trl.py --batch 8,16,32 # the same at three batch sizes
    .venv/bin/python benchmarks/dpo_vs_trl.py --quick         # 256 pairs, three jobs: a smoke test
    .venv/bin/python benchmarks/dpo_vs_trl.py --pairs 4000 --repeats 2 --ours 2x1,1x1,1x2

The pairs are made once, the DPO paper's way (``rlhf make-data``: 4 SFT samples per prompt,
labelled by the task reward, all differently-scored pairs), and every job trains one epoch on
exactly those pairs (one epoch, or ``--epochs``) at the same global batch (prompts per optimizer
step), beta and lr, in fp32 without evaluation. The reference log-probs are computed once per
job by us and by TRL's precompute variants, once per epoch by TRL's defaults. Each job runs in a
fresh process and is timed from its first call to the trained model on disk, reference log-probs
included:

- ours: ``rlhf.driver.dpo.run`` with ``configs/dpo.yaml`` and a fresh table cache (so the vLLM
  reference pass is counted), N ranks x C CPUs each (``--ours 2x1``: two ranks of one CPU).
  The reference pass runs before the ranks start and gets the job's N x C CPUs.
  Phases are timed by wrapping the functions the driver calls (the wrappers only time and
  delegate; the engine and trainer wrappers also wait until the actors are up, so their
  start-up is not billed to the first call). metrics.jsonl gives the time spent inside the
  ranks, the rest of the train loop is the driver and Ray.
- TRL: ``DPOTrainer`` with TRL's defaults otherwise, in four variants: gradient checkpointing
  on (TRL's default) or off (ours trains without it), and ``precompute_ref_log_probs`` off (TRL's
  default: the reference model runs in every step) or on.

One-time start-up (Ray, the vLLM engine, the DeepSpeed ranks; for TRL loading the policy and
reference models and building the trainer) is shown on its own; pairs/s is over the rest, the
"work", and also over the whole job. Other tests may share the machine: compare the ratios of
one run, and use ``--repeats`` (the fastest repeat of each job is kept) to damp the noise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import REPO, Phases, emit, make_pairs, print_table, run_job  # noqa: E402

TRL_VARIANTS = {
    "trl": {"gradient_checkpointing": True, "precompute": False},
    "trl-precompute": {"gradient_checkpointing": True, "precompute": True},
    "trl-no-gc": {"gradient_checkpointing": False, "precompute": False},
    "trl-no-gc-precompute": {"gradient_checkpointing": False, "precompute": True},
}
TRL_NAMES = {
    "trl": "TRL defaults (grad. ckpt, live ref)",
    "trl-precompute": "TRL precompute_ref_log_probs",
    "trl-no-gc": "TRL no grad. ckpt (as ours)",
    "trl-no-gc-precompute": "TRL no grad. ckpt + precompute",
}


# --- the jobs (each in its own process) ------------------------------------------------------


def ours_job(job: dict[str, Any]) -> dict[str, Any]:
    """Our offline DPO job, phases timed; returns seconds per phase and train-loop facts."""
    import ray

    from rlhf.config import load_config
    from rlhf.driver import dpo, setup
    from rlhf.run_dir import read_metrics

    out = Path(job["out"])
    ranks, cpus = job["ranks"], job["cpus_per_rank"]
    options = [f"trainer.zero_stage={job['zero_stage']}"] if "zero_stage" in job else []
    options += [f"reference.backend={job['reference']}"] if "reference" in job else []
    options += ["trainer.share_prompt=false"] if job.get("separate") else []
    cfg = load_config(
        dpo.DPOConfig,
        REPO / "configs" / "dpo.yaml",
        [
            f"model.path={job['model']}",
            f"data.path={job['data']}",
            f"data.cache_dir={out / 'table_cache'}",  # fresh: the reference pass is counted
            "data.eval_fraction=0",
            f"output_dir={out / 'run'}",
            f"loss.beta={job['beta']}",
            f"trainer.lr={job['lr']}",
            f"trainer.num_ranks={ranks}",
            f"trainer.num_cpus_per_rank={cpus}",
            # The reference pass runs before the ranks start: it gets the job's CPUs.
            f"reference.engine.num_cpus={ranks * cpus}",
            f"trainer.micro_batch_prompts={job['batch'] // ranks}",
            "trainer.gradient_accumulation_steps=1",
            f"schedule.epochs={job['epochs']}",
            "schedule.eval_every=0",
            "schedule.save_every=0",
            *options,
        ],
    )
    _preimport()
    phases = Phases()

    @contextlib.contextmanager
    def session(ray_cfg, *stages):
        start = time.perf_counter()
        with original_session(ray_cfg, *stages) as scope:
            phases.add("ray start", time.perf_counter() - start)
            yield scope
            start = time.perf_counter()  # the job's own teardown: actors, then Ray
        phases.add("teardown", time.perf_counter() - start)

    def start_reference(*args, **kwargs):
        with phases("engine load"):
            server = original_start_reference(*args, **kwargs)
            ray.get(server.response_logps.remote([[1]], [[2]]))  # returns once the engine is up
        return server

    def start_trainers(*args, **kwargs):
        with phases("trainer start"):
            group = original_start_trainers(*args, **kwargs)
            ray.get(group.call("ping"))  # returns once every rank built its DeepSpeed engine
        return group

    original_session, dpo.ray_session = dpo.ray_session, session
    original_start_reference, setup.start_reference = setup.start_reference, start_reference
    original_start_trainers, dpo.start_trainers = dpo.start_trainers, start_trainers
    setup.load_preferences = phases.timed("data", setup.load_preferences)
    setup.add_reference_logps = phases.timed("reference", setup.add_reference_logps)
    # The loop submits step i + 1 before reading step i: time both halves of each step.
    dpo.submit_step = phases.timed("train", dpo.submit_step)
    dpo.step_metrics = phases.timed("train", dpo.step_metrics)
    dpo.save_checkpoint = phases.timed("save", dpo.save_checkpoint)

    start = time.perf_counter()
    run_dir = dpo.run(cfg)
    total = time.perf_counter() - start - phases.seconds.pop("teardown")
    steps = [m for m in read_metrics(run_dir) if "train/tokens_per_s" in m]
    in_ranks = sum(m["train/tokens"] / m["train/tokens_per_s"] for m in steps)
    return {"seconds": phases.seconds, "total": total, "steps": len(steps), "in_ranks": in_ranks}


def _preimport() -> None:
    """What the driver imports lazily (TRL's job has these loaded before its clock starts)."""
    import torch.utils.tensorboard  # noqa: F401 (the metrics logger)
    from transformers import AutoTokenizer  # noqa: F401


def trl_job(job: dict[str, Any]) -> dict[str, Any]:
    """TRL's DPOTrainer on the same pairs; returns seconds per phase."""
    import pyarrow.parquet as pq
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    out = Path(job["out"])
    variant = TRL_VARIANTS[job["kind"]]
    phases = Phases()
    # Tokenizing and the reference precompute run inside the trainer's constructor.
    DPOTrainer._prepare_dataset = phases.timed("data", DPOTrainer._prepare_dataset)
    DPOTrainer._precompute_ref_logps = phases.timed("reference", DPOTrainer._precompute_ref_logps)
    args = DPOConfig(
        output_dir=str(out / "run"),
        per_device_train_batch_size=job["batch"],
        learning_rate=job["lr"],
        beta=job["beta"],
        num_train_epochs=job["epochs"],
        bf16=False,
        report_to="none",
        eval_strategy="no",
        gradient_checkpointing=variant["gradient_checkpointing"],
        precompute_ref_log_probs=variant["precompute"],
    )

    start = time.perf_counter()
    with phases("model load"):
        tokenizer = AutoTokenizer.from_pretrained(job["model"])
        model = AutoModelForCausalLM.from_pretrained(job["model"])
    with phases("data"):
        table = pq.read_table(job["data"], columns=["prompt", "chosen", "rejected"])
        dataset = Dataset.from_dict(table.to_pydict())
    inside = sum(phases.seconds.get(k, 0.0) for k in ("data", "reference"))
    with phases("trainer init"):
        trainer = DPOTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer
        )
    phases.seconds["trainer init"] -= (
        sum(phases.seconds.get(k, 0.0) for k in ("data", "reference")) - inside
    )
    with phases("train"):
        trainer.train()
    with phases("save"):
        trainer.save_model(str(out / "model"))
    total = time.perf_counter() - start
    return {"seconds": phases.seconds, "total": total, "steps": trainer.state.global_step}


# --- the report ------------------------------------------------------------------------------

STARTUP = ("ray start", "engine load", "trainer start", "model load", "trainer init")


def summarize(name: str, pairs: int, result: dict[str, Any]) -> dict[str, Any]:
    """Start-up, phases, work and rates of one job's result."""
    s = result["seconds"]
    startup = sum(s.get(k, 0.0) for k in STARTUP)
    work = result["total"] - startup
    named = sum(s.get(k, 0.0) for k in ("data", "reference", "train"))
    return {
        "name": name,
        "startup": startup,
        "data": s.get("data", 0.0),
        "reference": s.get("reference"),
        "train": s.get("train", 0.0),
        "other": work - named,  # saving, run directory, logging
        "work": work,
        "total": result["total"],
        "pairs_per_s": pairs / work,
        "pairs_per_s_total": pairs / result["total"],
        "ms_per_step": 1000 * s.get("train", 0.0) / max(result["steps"], 1),
        "result": result,
    }


def report(pairs: int, epochs: int, batch: int, rows: list[dict[str, Any]]) -> None:
    """The table, the start-up line, the ratios and where our train step's time goes."""
    print(
        f"\n{pairs} pairs, {batch} prompts (pairs) per optimizer step, {epochs} epoch(s), fp32; "
        "pairs/s counts every pair once per epoch\n"
    )
    print_table(
        [
            "job",
            "start-up s",
            "data s",
            "reference s",
            "train s",
            "save/other s",
            "work s",
            "total s",
            "pairs/s (work)",
            "pairs/s (total)",
            "ms/step",
        ],
        [
            [
                r["name"],
                r["startup"],
                r["data"],
                "(in train)" if r["reference"] is None else r["reference"],
                r["train"],
                r["other"],
                r["work"],
                r["total"],
                r["pairs_per_s"],
                r["pairs_per_s_total"],
                r["ms_per_step"],
            ]
            for r in rows
        ],
    )
    print("\none-time start-up (not in 'work'):")
    for r in rows:
        parts = ", ".join(
            f"{k} {r['result']['seconds'][k]:.1f}s" for k in STARTUP if k in r["result"]["seconds"]
        )
        print(f"  {r['name']}: {r['startup']:.1f}s ({parts})")
    ours = [r for r in rows if r["name"].startswith("ours")]
    trl = [r for r in rows if not r["name"].startswith("ours")]
    if ours and trl:
        print("\nratios, ours / TRL (pairs/s; > 1: we are faster; target >= 1.5):")
        print_table(
            ["ours", "vs", "work", "total (incl. start-up)"],
            [
                [
                    o["name"],
                    t["name"],
                    f"{o['pairs_per_s'] / t['pairs_per_s']:.2f}x",
                    f"{o['pairs_per_s_total'] / t['pairs_per_s_total']:.2f}x",
                ]
                for o in ours
                for t in trl
            ],
        )
    for o in ours:
        res = o["result"]
        steps = max(res["steps"], 1)
        loop, in_ranks = res["seconds"].get("train", 0.0), res["in_ranks"]
        print(
            f"\n{o['name']}, train loop per step: {1000 * loop / steps:.1f} ms = "
            f"{1000 * in_ranks / steps:.1f} ms inside the ranks (forward, backward, optimizer, "
            f"collectives; slowest rank) + {1000 * (loop - in_ranks) / steps:.1f} ms driver and "
            f"Ray (collate, shard, object store, round trip, logging)"
        )


def parse_ours(text: str) -> dict[str, dict[str, Any]]:
    """``"2x1,1x2:z0:hf"`` -> jobs: 2 ranks of 1 CPU; 1 rank of 2 CPUs, ZeRO-0, HF reference.

    ``RxC`` is ranks x CPUs per rank; ``:zN`` sets the ZeRO stage, ``:hf`` the reference
    backend (default: those of ``configs/dpo.yaml``, ZeRO-2 and vLLM) and ``:separate`` turns
    ``trainer.share_prompt`` off (each response its own sequence: the layout before sharing).
    """
    jobs = {}
    for spec in text.split(","):
        shape, *options = spec.strip().split(":")
        ranks, _, cpus = shape.partition("x")
        r, c = int(ranks), int(cpus or 1)
        job: dict[str, Any] = {"kind": "ours", "ranks": r, "cpus_per_rank": c}
        name = f"ours {r} rank{'s' if r > 1 else ''} x {c} CPU"
        for option in options:
            if option.startswith("z"):
                job["zero_stage"] = int(option[1:])
                name += f", ZeRO-{option[1:]}"
            elif option == "hf":
                job["reference"] = "hf"
                name += ", HF ref"
            elif option == "separate":
                job["separate"] = True
                name += ", prompt not shared"
            else:
                raise SystemExit(f"--ours {spec}: unknown option {option!r} (zN, hf, separate)")
        jobs[name] = job
    return jobs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="256 pairs; TRL x2 and ours 2x1")
    parser.add_argument(
        "--batch", default="16", help="prompts per optimizer step; a list (8,16,32) runs each"
    )
    parser.add_argument(
        "--epochs", type=int, default=1, help="passes over the pairs (configs/dpo.yaml: 2)"
    )
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument(
        "--ours",
        default="1x2:z0:hf,1x2:z0,2x1",
        help="RxC[:zN][:hf][:separate],... (see parse_ours); default: one rank on both cores "
        "with the HF or the vLLM reference, and configs/dpo.yaml's two ZeRO-2 ranks",
    )
    parser.add_argument("--trl", default=",".join(TRL_VARIANTS), help="TRL variants to run")
    parser.add_argument("--repeats", type=int, default=1, help="the fastest repeat is kept")
    parser.add_argument("--workdir", help="data, runs and logs (default: a new temp dir)")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # internal: run one job and exit
    args = parser.parse_args(argv)
    if args.job:
        job = json.loads(args.job)
        emit((ours_job if job["kind"] == "ours" else trl_job)(job))
        return
    if args.quick:
        args.pairs, args.ours, args.trl, args.repeats = 256, "2x1", "trl,trl-precompute", 1
    from rlhf.task import build_tiny_model

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dpo_vs_trl-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    model = str(build_tiny_model())
    start = time.perf_counter()
    data = make_pairs(workdir / f"pairs-{args.pairs}.parquet", args.pairs)
    print(f"data: {args.pairs} pairs in {data} ({time.perf_counter() - start:.0f}s, made once)")
    jobs = parse_ours(args.ours)
    jobs.update({TRL_NAMES[v]: {"kind": v} for v in args.trl.split(",") if v})
    stamp = time.strftime("%Y%m%d-%H%M%S")  # fresh run dirs and table caches in a reused workdir
    summary = []
    for batch in (int(b) for b in args.batch.split(",")):
        common = {"model": model, "data": str(data), "batch": batch, "beta": args.beta}
        common.update(lr=args.lr, epochs=args.epochs)
        best: dict[str, dict[str, Any]] = {}
        for repeat in range(args.repeats):
            # Alternate TRL and ours so that a noisy minute does not land on one side only.
            order = _interleave(list(jobs))
            for index, name in enumerate(order):
                out = workdir / f"{stamp}-b{batch}-r{repeat}-{index}-{jobs[name]['kind']}"
                job = {**common, **jobs[name], "out": str(out)}
                result = run_job(Path(__file__), job, workdir / f"{out.name}.log")
                row = summarize(name, args.pairs * args.epochs, result)
                print(
                    f"  [batch {batch}, {repeat + 1}/{args.repeats}] {name}: "
                    f"{row['work']:.1f}s work, {row['startup']:.1f}s start-up, "
                    f"{row['pairs_per_s']:.0f} pairs/s",
                    flush=True,
                )
                if name not in best or row["work"] < best[name]["work"]:
                    best[name] = row
        report(args.pairs, args.epochs, batch, [best[name] for name in jobs])
        summary.append((batch, best))
    if len(summary) > 1:
        print("\nwork ratios, ours / TRL, by prompts per step:")
        pairs_of = [
            (o, t) for o in jobs if o.startswith("ours") for t in jobs if not t.startswith("ours")
        ]
        print_table(
            ["ours", "vs", *(str(batch) for batch, _ in summary)],
            [
                [o, t, *(f"{b[o]['pairs_per_s'] / b[t]['pairs_per_s']:.2f}x" for _, b in summary)]
                for o, t in pairs_of
            ],
        )
    print(f"\nlogs and runs: {workdir}")


def _interleave(names: list[str]) -> list[str]:
    ours = [n for n in names if n.startswith("ours")]
    trl = [n for n in names if not n.startswith("ours")]
    out = []
    while ours or trl:
        if trl:
            out.append(trl.pop(0))
        if ours:
            out.append(ours.pop(0))
    return out


if __name__ == "__main__":
    main()

"""Online DPO with full fine-tuning against LoRA adapters: sync size and time, memory, copies.

    .venv/bin/python benchmarks/lora.py                # full, LoRA r=8, LoRA r=64; 4 x 64 prompts
    .venv/bin/python benchmarks/lora.py --quick        # 2 x 32 prompts
    .venv/bin/python benchmarks/lora.py --response-tokens 24   # every response 24 tokens

The same online DPO job (``configs/online_dpo.yaml`` on the embedded model, 2 ZeRO-2 ranks, one
sampler, K = 4, up to 48 new tokens) three times, each in a fresh process (``harness.run_job``):

- full fine-tuning: every weight trains; the reference is a vLLM reference server (the config's
  default), each sync ships the whole model (``samplers.sync``: broadcast, the default);
- LoRA r = 8 and r = 64 (alpha = 2 r, the attention projections, the default targets): the
  adapter trains, only its tensors travel (the object store), and the sampler's engine serves
  the reference itself (``reference.backend: base``, the LoRA default), so no reference server.

Per job: bytes per sync (``sync_bytes``) and sync time (``time/sync``, mean over rounds), the
job's peak memory (the sum of the resident set sizes of the job's process tree: the driver, its
local Ray and every actor, sampled every 0.2 s), the model copies held (trainer ranks + samplers
+ reference servers, from the loop's actors), prompts/s of the rounds (start-up excluded) and
the last round's held-out reward. LoRA trains at its own learning rate (``--lora-lr``; an
adapter wants a larger one), so the rewards are a sanity check, not a comparison.

Prompts/s at this size follows the length of the responses, and each job's policy learns its
own lengths (the embedded task rewards the words, not the length). ``--response-tokens N`` makes
every response exactly N tokens (``samplers.sampling.min_tokens`` = ``max_tokens`` = N), so that
the jobs sample the same number of tokens and prompts/s compares the systems alone.

The README's Benchmarks section has the measured table and what it shows (one run, 2026-12-02).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import REPO, emit, print_table, run_job  # noqa: E402

EVAL_PROMPTS = 16  # held-out prompts sampled each round (rounds.eval_prompts)


class TreeMemory:
    """Samples the summed RSS of this process and all its descendants in a thread; ``peak``
    is the largest sum seen (bytes) and ``processes`` the process count at that moment."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s, self.peak, self.processes = interval_s, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(self.interval_s):
            total, count = 0, 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                    count += 1
                except psutil.Error:  # ended between listing and reading
                    pass
            if total > self.peak:
                self.peak, self.processes = total, count


def job_main(job: dict[str, Any]) -> dict[str, Any]:
    """One online DPO job; its metrics, peak memory and the model copies its actors hold."""
    from rlhf.config import load_config
    from rlhf.driver import online_dpo
    from rlhf.driver.online import SamplersReference
    from rlhf.run_dir import read_metrics

    overrides = [
        f"model.path={job['model']}",
        f"output_dir={job['out']}",
        f"rounds.rounds={job['rounds']}",
        f"rounds.prompts_per_round={job['prompts_per_round']}",
        f"rounds.eval_prompts={EVAL_PROMPTS}",
        f"trainer.lr={job['lr']}",
    ]
    if job.get("response_tokens"):
        tokens = job["response_tokens"]
        overrides += [
            f"samplers.sampling.max_tokens={tokens}",
            f"samplers.sampling.min_tokens={tokens}",
        ]
    if job["r"]:
        overrides += [f"trainer.lora.r={job['r']}", f"trainer.lora.alpha={2 * job['r']}"]
    cfg = load_config(online_dpo.OnlineDPOConfig, REPO / "configs" / "online_dpo.yaml", overrides)
    copies: dict[str, int] = {}
    rounds: list[float] = []
    started: dict[Any, float] = {}

    def watch(event) -> None:
        """The loop's phase hook: wall time of each round; the model copies once trainers run."""
        if event.phase == "round":
            if not event.ended:
                started[event.round] = time.perf_counter()
            else:
                rounds.append(time.perf_counter() - started.pop(event.round))
        if event.phase == "trainers" and event.ended:
            workers = event.workers
            copies["trainer ranks"] = len(workers.policy.actors)
            copies["samplers"] = len(workers.samplers)
            served = isinstance(workers.reference, SamplersReference)  # reference.backend: base
            copies["reference servers"] = 0 if served else 1

    with TreeMemory() as memory:
        run_dir = online_dpo.run(cfg, hooks=[watch])
    per_round = [m for m in read_metrics(run_dir) if "round" in m and "time/sync" in m]
    return {
        "rounds": rounds,
        "sync_bytes": [m["sync_bytes"] for m in per_round],
        "sync_s": [m["time/sync"] for m in per_round],
        "lengths": [m.get("train/response_length", 0.0) for m in per_round],
        # tokens sampled per round (the round's prompts and the held-out ones, K each)
        "tokens": [
            cfg.samplers.sampling.n
            * (
                job["prompts_per_round"] * m.get("train/response_length", 0.0)
                + EVAL_PROMPTS * m.get("eval/response_length", 0.0)
            )
            for m in per_round
        ],
        "phases": [
            {k.removeprefix("time/"): v for k, v in m.items() if k.startswith("time/")}
            for m in per_round
        ],
        "reward": per_round[-1]["eval/reward/mean"],
        "peak_rss": memory.peak,
        "processes": memory.processes,
        "copies": copies,
        "prompts": job["rounds"] * job["prompts_per_round"],
    }


def report(results: dict[str, dict[str, Any]]) -> None:
    rows = []
    full = next(iter(results.values()))
    for name, r in results.items():
        steady = r["rounds"][1:] or r["rounds"]  # round 0 pays first-call costs
        per_round = r["prompts"] / len(r["rounds"])
        rows.append(
            [
                name,
                f"{statistics.mean(r['sync_bytes']):,.0f}",
                f"{1000 * statistics.mean(r['sync_s']):.1f}",
                f"{r['peak_rss'] / 2**30:.2f}",
                r["processes"],
                sum(r["copies"].values()),
                f"{per_round / statistics.mean(steady):.1f}",
                f"{r['reward']:.3f}",
            ]
        )
    print_table(
        [
            "job",
            "sync bytes",
            "sync ms",
            "peak RSS GiB",
            "processes",
            "model copies",
            "prompts/s",
            "reward",
        ],
        rows,
    )
    print("\nratios against full fine-tuning (same run):")
    for name, r in list(results.items())[1:]:
        steady = statistics.mean(r["rounds"][1:] or r["rounds"])
        full_steady = statistics.mean(full["rounds"][1:] or full["rounds"])
        nbytes = statistics.mean(r["sync_bytes"]) / statistics.mean(full["sync_bytes"])
        seconds = statistics.mean(r["sync_s"]) / statistics.mean(full["sync_s"])
        print(
            f"  {name}: sync bytes {nbytes:.4f}x, sync time {seconds:.2f}x, "
            f"peak RSS {r['peak_rss'] / full['peak_rss']:.2f}x, model copies "
            f"{sum(r['copies'].values())} vs {sum(full['copies'].values())}, prompts/s "
            f"{full_steady / steady:.2f}x"
        )
    for name, r in results.items():
        print(f"  {name}: copies {r['copies']}")
    print("  (prompts/s: rounds after the first; round 0 pays the engines' first-call costs)")
    print("\nseconds per round by phase (rounds after the first, mean):")
    for name, r in results.items():
        steady = r["phases"][1:] or r["phases"]
        names = sorted({k for phases in steady for k in phases})
        means = {k: statistics.mean(p.get(k, 0.0) for p in steady) for k in names}
        length = statistics.mean(r["lengths"][1:] or r["lengths"])
        tokens = statistics.mean(r["tokens"][1:] or r["tokens"])
        per_token = 1000 * means.get("generate", 0.0) / (tokens or 1)
        print(
            f"  {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in means.items()),
            f"(responses of {length:.1f} tokens; generate {per_token:.3f} ms per sampled token)",
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--prompts-per-round", type=int, default=64)
    parser.add_argument("--ranks", default="8,64", help="LoRA ranks, one job each")
    parser.add_argument("--lr", type=float, default=5e-4, help="full fine-tuning's lr")
    parser.add_argument("--lora-lr", type=float, default=1e-2)
    parser.add_argument("--quick", action="store_true", help="2 x 32 prompts")
    parser.add_argument(
        "--response-tokens",
        type=int,
        default=0,
        help="every response exactly this many tokens (0: each policy ends its own, up to 48)",
    )
    parser.add_argument("--workdir", help="runs and logs (default: a new temp dir)")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # internal: run one job and exit
    args = parser.parse_args(argv)
    if args.job:
        emit(job_main(json.loads(args.job)))
        return
    if args.quick:
        args.rounds, args.prompts_per_round = 2, 32
    from rlhf.task import build_tiny_model

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lora-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    common = {
        "model": str(build_tiny_model()),
        "rounds": args.rounds,
        "prompts_per_round": args.prompts_per_round,
        "response_tokens": args.response_tokens,
    }
    jobs = [("full fine-tuning", {"r": 0, "lr": args.lr})]
    jobs += [(f"LoRA r={r}", {"r": int(r), "lr": args.lora_lr}) for r in args.ranks.split(",")]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = {}
    for index, (name, job) in enumerate(jobs):
        out = workdir / f"{stamp}-{index}-r{job['r']}"
        results[name] = run_job(
            Path(__file__), {**common, **job, "out": str(out)}, workdir / f"{out.name}.log"
        )
        print(f"  {name}: {sum(results[name]['rounds']):.1f} s of rounds", flush=True)
    lengths = f"responses of {args.response_tokens} tokens" if args.response_tokens else "up to 48"
    print(f"\n{args.rounds} rounds x {args.prompts_per_round} prompts, K = 4, {lengths}\n")
    report(results)
    print(f"\nlogs and runs: {workdir}")


if __name__ == "__main__":
    main()

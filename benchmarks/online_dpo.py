"""Online DPO: round time by phase, weight-sync bandwidth, and TRL's OnlineDPOTrainer.

    .venv/bin/python benchmarks/online_dpo.py              # 6 rounds x 64 prompts
    .venv/bin/python benchmarks/online_dpo.py --quick      # 2 rounds x 32 prompts, fewer jobs

Jobs, each in a fresh process, on the embedded model and task (sentiment reward), 8 prompts per
optimizer step, beta 0.1, lr 5e-4, up to 48 new tokens at temperature 1, fp32:

- ours (``rlhf.driver.online_dpo.run``, ``configs/online_dpo.yaml``): K = 2 samples per prompt
  (TRL's fixed K) and K = 4 (our default), best-vs-worst pairs, one pass over each round's pairs,
  one held-out prompt per round unless ``--eval-prompts`` says more, in every round unless
  ``--eval-every`` says otherwise (the job's evaluation cannot be switched off; TRL evaluates
  nothing), and once more on the final weights. Phases come from metrics.jsonl
  (``time/generate|score|reference|train|sync``); the whole round, start-up and the per-round
  checkpoint are timed by the loop's phase hooks (``rlhf.driver.online_loop``; the hook waits
  until new actors are up).
- TRL ``trl.experimental.online_dpo.OnlineDPOTrainer`` with the task's reward as a Python reward
  function, generating with transformers (TRL's default; its vLLM mode needs CUDA). Prompts get
  the tokenizer's BOS written in front (TRL tokenizes prompts without special tokens; our
  samplers add BOS, which the embedded model was trained with); the reward sees them without.
  Gradient checkpointing on (TRL's default) and off (as ours).

Asynchronous rounds (``--max-staleness 0,1``: one job of ours per value, K the first of
``--k``): prompts/s and the round's critical path, the phases the driver waits on (at staleness
1 ``generate`` is what is left of the next round's sampling, started before training, when the
round needs it, and ``sync`` includes waiting for it), and the held-out reward of the final
weights, after the same number of rounds (``final/reward/mean``; a round's own ``eval/`` reward
is that of the weights that sampled it, a version older at staleness 1), with ``--seeds 0,1,2``
one job per staleness and seed and the reward's range over the seeds, the run-to-run spread
that staleness 1's reward is compared with.
``--disaggregate`` pins the samplers' processes to core 0 and everything else (trainer ranks,
reference, reward) to core 1, one thread each, the shape in which the overlap shows on a 2-core
machine; measure on an otherwise idle machine::

    .venv/bin/python benchmarks/online_dpo.py --max-staleness 0,1 --disaggregate --trl none \
        --no-sync-parts --ranks 1 --k 4 --seeds 0,1,2 --eval-prompts 64 --eval-every 6

With ``--eval-every 1`` the report adds the held-out reward by weights version: every round
samples the held-out prompts with its training prompts, on the weights that sample the round
(``rollout/policy_version``), so each round's ``eval/reward/mean`` is that version's reward
(at staleness 1 version 0 samples rounds 0 and 1, and the last version before the final weights
samples none), and ``final/reward/mean`` that of the final weights (version = rounds); mean and
range over seeds, per staleness. Then the same rewards by wall time (when each version exists,
counted from round 0's start) and, at each moment a version of the first staleness exists, the
latest version the others hold. An entry ``S:R`` of ``--max-staleness`` runs staleness S for R
rounds (``--max-staleness 0,1,1:8``: staleness 1 for 6 and for 8 rounds). Sampling the held-out
prompts in every round adds to every round's work: that run's prompts/s are not the throughput.

Weight sync: bytes/s of each round's sync (``sync_bytes / time/sync``: rank 0 gathers the
weights, Ray carries them, vLLM reloads them) against a plain in-memory copy of the same tensors
in one process (``tensor.clone()`` of the model's state dict); ``--no-sync-parts`` skips timing
the parts of a sync one by one (gather, object store, reload) and then the same weights by
broadcast (``samplers.sync=broadcast``), which starts Ray once more; ``--sync-only`` runs just
that job and the memory copy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import REPO, Phases, emit, print_table, run_job, trl_task  # noqa: E402

PHASES = ("generate", "score", "reference", "train", "sync")


# --- the jobs (each in its own process) ------------------------------------------------------


def ours_job(job: dict[str, Any]) -> dict[str, Any]:
    """Our online DPO job; returns start-up phases, per-round wall times and metrics."""
    import ray
    import torch.utils.tensorboard  # noqa: F401 (imported before the clock, as TRL's are)

    from rlhf.config import load_config
    from rlhf.driver import online_dpo
    from rlhf.run_dir import read_metrics

    out = Path(job["out"])
    cfg = load_config(
        online_dpo.OnlineDPOConfig,
        REPO / "configs" / "online_dpo.yaml",
        [
            f"model.path={job['model']}",
            f"output_dir={out / 'run'}",
            f"rounds.rounds={job['rounds']}",
            f"rounds.prompts_per_round={job['prompts_per_round']}",
            "rounds.epochs_per_round=1",
            f"rounds.eval_prompts={job.get('eval_prompts', 1)}",
            f"rounds.eval_every={job.get('eval_every', 1)}",
            f"seed={job.get('seed', 0)}",
            f"samplers.sampling.n={job['k']}",
            f"samplers.sampling.max_tokens={job['max_tokens']}",
            "samplers.sampling.temperature=1.0",
            f"loss.beta={job['beta']}",
            f"trainer.lr={job['lr']}",
            f"trainer.num_ranks={job['ranks']}",
            f"trainer.micro_batch_prompts={job['batch'] // job['ranks']}",
            f"rounds.max_staleness={job.get('max_staleness', 0)}",
        ],
    )
    phases = Phases()
    rounds: list[float] = []
    checkpoints: list[float] = []  # each round's checkpoint, after it
    started: dict[tuple[str, int | None], float] = {}
    names = {  # the loop's phases timed here, by the name this report gives them
        "ray start": "ray start",
        "rollout actors": "engine load",
        "trainers": "trainer start",
        "checkpoint": "checkpoint",
        "teardown": "teardown",
    }

    def timing(event) -> None:
        """The loop's phase hook: wall time of start-up, rounds, checkpoints and teardown."""
        key = (event.phase, event.round)
        if not event.ended:
            started[key] = time.perf_counter()
            return
        workers = event.workers
        if event.phase == "rollout actors":  # returns once the engines are up
            ray.get(
                [workers.reference.token_logprobs.remote([[1, 2]])]
                + [s.token_logprobs.remote([[1, 2]]) for s in workers.samplers]
            )
        elif event.phase == "trainers":
            ray.get(workers.policy.call("ping"))
            if job.get("disaggregate"):
                others = [workers.reference, *workers.policy.actors]
                others += [workers.reward.actor] if hasattr(workers.reward, "actor") else []
                ray.get([pin(actor, 0) for actor in workers.samplers])
                ray.get([pin(actor, 1) for actor in others])
        seconds = time.perf_counter() - started.pop(key)
        if event.phase == "round":
            rounds.append(seconds)
        elif event.phase in names:
            if event.phase == "checkpoint":
                checkpoints.append(seconds)
            phases.add(names[event.phase], seconds)

    start = time.perf_counter()
    run_dir = online_dpo.run(cfg, hooks=[timing])
    total = time.perf_counter() - start - phases.seconds.pop("teardown")
    per_round = [m for m in read_metrics(run_dir) if "round" in m and "time/sync" in m]
    keep = (
        "sync_bytes",
        "preferences",
        "eval/reward/mean",
        "rollout/policy_version",
        "rollout/policy_version_lag",
    )
    (final,) = [m for m in read_metrics(run_dir) if "final/reward/mean" in m]
    return {
        "seconds": phases.seconds,
        "total": total,
        "rounds": rounds,
        "checkpoints": checkpoints,
        "max_staleness": job.get("max_staleness", 0),
        "round_metrics": [
            {k: m[k] for k in m if k.startswith("time/") or k in keep} for m in per_round
        ],
        "prompts": job["rounds"] * job["prompts_per_round"],
        "final_reward": final["final/reward/mean"],
    }


def pin(actor, core: int):
    """Pins every thread of the actor's process to ``core``, torch to one thread (a ref)."""
    return actor.__ray_call__.remote(_pin_self, core)


def _pin_self(_self, core: int) -> None:
    import os

    import torch

    torch.set_num_threads(1)
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), {core})


def trl_job(job: dict[str, Any]) -> dict[str, Any]:
    """TRL's OnlineDPOTrainer on the same prompts, reward and model; returns its timings."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    out = Path(job["out"])
    num_prompts = job["rounds"] * job["prompts_per_round"]
    tokenizer, prompts, sentiment = trl_task(job["model"], num_prompts)

    args = OnlineDPOConfig(
        output_dir=str(out / "run"),
        per_device_train_batch_size=job["batch"],
        learning_rate=job["lr"],
        beta=[job["beta"]],
        max_new_tokens=job["max_tokens"],
        temperature=1.0,
        num_train_epochs=1,
        bf16=False,
        report_to="none",
        gradient_checkpointing=job["gradient_checkpointing"],
    )
    phases = Phases()
    start = time.perf_counter()
    with phases("start-up"):
        trainer = OnlineDPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(job["model"]),
            reward_funcs=sentiment,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": prompts}),
            processing_class=tokenizer,
        )
    with phases("train"):
        trainer.train()
    with phases("save"):
        trainer.save_model(str(out / "model"))
    total = time.perf_counter() - start
    return {"seconds": phases.seconds, "total": total, "prompts": num_prompts}


def sync_parts_job(job: dict[str, Any]) -> dict[str, Any]:
    """The parts of one weight sync, timed one by one with the framework's public pieces."""
    import ray

    from rlhf.config import load_config
    from rlhf.driver import online_dpo
    from rlhf.driver.common import ray_session, start_samplers
    from rlhf.driver.online import sync_weights
    from rlhf.driver.setup import start_trainers
    from rlhf.driver.weight_sync import BroadcastSync

    cfg = load_config(
        online_dpo.OnlineDPOConfig,
        REPO / "configs" / "online_dpo.yaml",
        [f"model.path={job['model']}", f"trainer.num_ranks={job['ranks']}"],
    )
    parts: dict[str, list[float]] = {"gather": [], "put": [], "reload": [], "whole": []}
    with ray_session(cfg.ray) as scope:
        samplers = scope.own(
            start_samplers(1, cfg.samplers.engine, cfg.model, job["model"], 0, cfg.ray)
        )
        group = scope.own(start_trainers(cfg, job["model"]))
        ray.get(group.call("ping") + [s.token_logprobs.remote([[1, 2]]) for s in samplers])
        for _ in range(job["repeats"]):
            t0 = time.perf_counter()
            weights = ray.get(group.call("state_dict_for_sync"))[0]
            t1 = time.perf_counter()
            handle = ray.put(weights)
            t2 = time.perf_counter()
            ray.get([s.load_weights.remote(handle) for s in samplers])
            t3 = time.perf_counter()
            sync_weights(group, samplers)
            t4 = time.perf_counter()
            for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                parts[name].append(seconds)
        # The same weights by broadcast (samplers.sync=broadcast): group formed once, then syncs.
        t0 = time.perf_counter()
        broadcast = scope.own(BroadcastSync.open(group, samplers, device=cfg.device))
        parts["form group"] = [time.perf_counter() - t0]
        parts["broadcast whole"] = []
        for _ in range(job["repeats"]):
            t0 = time.perf_counter()
            sent = sync_weights(group, samplers)
            parts["broadcast whole"].append(time.perf_counter() - t0)
        assert broadcast.generation == 1 and sent == broadcast.manifest.nbytes
    nbytes = sum(t.numel() * t.element_size() for t in weights.values())
    return {"parts": {k: statistics.median(v) for k, v in parts.items()}, "bytes": nbytes}


def print_sync_parts(parts: dict[str, Any], copy_rate: float) -> None:
    """The sync-parts job's medians, and each sync method's bytes/s against a memory copy."""
    p, nbytes = parts["parts"], parts["bytes"]
    print(
        f"  one sync, part by part (median): gather on rank 0 + return to driver "
        f"{1000 * p['gather']:.1f} ms, ray.put {1000 * p['put']:.1f} ms, vLLM reload "
        f"{1000 * p['reload']:.1f} ms; sync_weights whole {1000 * p['whole']:.1f} ms"
    )
    print(f"  broadcast group formed once in {1000 * p['form group']:.0f} ms")
    for name, key in (("object store", "whole"), ("broadcast", "broadcast whole")):
        rate = nbytes / p[key]
        print(
            f"  sync_weights by {name:12s}: {1000 * p[key]:7.1f} ms = {rate / 1e6:6.1f} MB/s = "
            f"{rate / copy_rate:.4f}x of a memory copy"
        )


def memory_copy_rate(model_path: str, repeats: int = 50) -> tuple[int, float]:
    """(bytes, bytes/s) of cloning the model's state dict tensors in this process."""
    from transformers import AutoModelForCausalLM

    state = AutoModelForCausalLM.from_pretrained(model_path).state_dict()
    tensors = list({t.data_ptr(): t for t in state.values()}.values())  # tied weights once
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        copies = [t.clone() for t in tensors]
        times.append(time.perf_counter() - start)
        del copies
    return nbytes, nbytes / statistics.median(times)


# --- the report ------------------------------------------------------------------------------


def ours_summary(name: str, result: dict[str, Any]) -> dict[str, Any]:
    s = result["seconds"]
    startup = sum(s.get(k, 0.0) for k in ("ray start", "engine load", "trainer start"))
    rounds = result["rounds"]
    metrics = result["round_metrics"]
    checkpoint = s.get("checkpoint", 0.0) / max(len(rounds), 1)
    steady = rounds[1:] or rounds  # round 0 pays first-call costs (compiles, allocations)
    return {
        "name": name,
        "startup": startup,
        "loop": sum(rounds) + s.get("checkpoint", 0.0),
        "total": result["total"],
        "prompts": result["prompts"],
        "round0": rounds[0] + checkpoint,
        "round": statistics.mean(steady) + checkpoint,
        "phases": {
            p: statistics.mean(m[f"time/{p}"] for m in (metrics[1:] or metrics)) for p in PHASES
        },
        "checkpoint": checkpoint,
        "sync_bytes": metrics[-1]["sync_bytes"],
        "sync_rate": statistics.median(m["sync_bytes"] / m["time/sync"] for m in metrics),
        "sync_share": statistics.mean(
            m["time/sync"] / (r + checkpoint) for m, r in zip(metrics, rounds, strict=True)
        ),
        "preferences": statistics.mean(m["preferences"] for m in metrics),
        "reward": result["final_reward"],  # the final weights, after the same rounds
        "lag": metrics[-1].get("rollout/policy_version_lag", 0),
        "staleness": result["max_staleness"],
        "result": result,
    }


def rewards_by_version(result: dict[str, Any]) -> dict[int, float]:
    """One job's held-out reward (``eval/reward/mean``) by the weights version that gave it.

    A round samples its held-out prompts together with its training prompts, so on the weights
    that sampled the round (``rollout/policy_version``: the round's index at staleness 0, up to k
    versions older at staleness k); a version that sampled several rounds (version 0 samples
    rounds 0 and 1 at staleness 1) gets their mean. The final weights (version = the number of
    rounds) give ``final/reward/mean``. Each round samples with its own seed.
    """
    evals: dict[int, list[float]] = {}
    for m in result["round_metrics"]:
        if "eval/reward/mean" in m:
            evals.setdefault(m["rollout/policy_version"], []).append(m["eval/reward/mean"])
    rewards = {version: statistics.mean(values) for version, values in evals.items()}
    rewards[len(result["rounds"])] = result["final_reward"]
    return rewards


def version_seconds(result: dict[str, Any]) -> dict[int, float]:
    """Wall seconds from the first round's start until each weights version exists: version v
    after round v - 1 (whose sync made it) and that round's checkpoint; version 0 at 0 (start-up
    not counted)."""
    seconds, elapsed = {0: 0.0}, 0.0
    pairs = zip(result["rounds"], result["checkpoints"], strict=True)
    for index, (round_s, checkpoint_s) in enumerate(pairs):
        elapsed += round_s + checkpoint_s
        seconds[index + 1] = elapsed
    return seconds


def spread(values: list[float], digits: int = 3) -> str:
    """``mean (min-max)`` of ``values``; the value alone when there is one."""
    mean = f"{statistics.mean(values):.{digits}f}"
    if len(values) == 1:
        return mean
    return f"{mean} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def report_by_version(ours: list[dict]) -> None:
    """The held-out reward by weights version and by wall time, one column per staleness and
    number of rounds (mean and range over the seeds), and which loop is ahead at equal time."""
    groups: dict[tuple[int, int], list[dict]] = {}
    for o in ours:
        groups.setdefault((o["staleness"], len(o["result"]["rounds"])), []).append(o)
    labels = [f"staleness {k}, {n} rounds" for k, n in groups]
    rewards = {g: [rewards_by_version(o["result"]) for o in runs] for g, runs in groups.items()}
    seconds = {g: [version_seconds(o["result"]) for o in runs] for g, runs in groups.items()}

    def evaluated(group: tuple[int, int]) -> dict[int, list[float]]:
        """The group's rewards by version, for the versions every seed evaluated."""
        runs = rewards[group]
        common = set.intersection(*(set(r) for r in runs))
        return {v: [r[v] for r in runs] for v in sorted(common)}

    counts = zip(labels, groups.values(), strict=True)
    seeds = ", ".join(f"{label}: {len(runs)}" for label, runs in counts)
    print(
        "\nheld-out reward by weights version: each round's eval/reward/mean under the version "
        "that sampled it (rollout/policy_version), final/reward/mean for version = rounds "
        f"(marked f); mean (min-max) over seeds ({seeds}):"
    )
    by_group = {g: evaluated(g) for g in groups}
    versions = sorted({v for values in by_group.values() for v in values})
    print_table(
        ["job", *(f"v{v}" for v in versions)],
        [
            [o["name"], *(f"{r[v]:.3f}" if v in r else None for v in versions)]
            for runs, group_rewards in zip(groups.values(), rewards.values(), strict=True)
            for o, r in zip(runs, group_rewards, strict=True)
        ],
    )
    rows = []
    for v in versions:
        row: list[Any] = [v]
        for (_, rounds), values in by_group.items():
            final = " f" if v == rounds else ""
            row.append(spread(values[v]) + final if v in values else None)
        rows.append(row)
    print_table(["version", *labels], rows)
    for label, values in zip(labels, by_group.values(), strict=True):
        last = max(values)
        first = max((v for v in values if v <= last - 3), default=min(values))
        gain = (statistics.mean(values[last]) - statistics.mean(values[first])) / (last - first)
        width = max(values[last]) - min(values[last])
        print(
            f"  {label}: reward gain per version from version {first} to {last} "
            f"{gain:+.4f} (means); range over seeds at version {last}: {width:.3f}"
        )

    print(
        "\nheld-out reward by wall time: seconds from round 0's start until each version exists "
        "(the rounds before it and their checkpoints; start-up not counted; the rounds include "
        "sampling the held-out prompts), mean (min-max) over seeds, and the version's reward "
        "(mean):"
    )
    times = {
        g: {v: [s[v] for s in seconds[g]] for v in by_group[g] if all(v in s for s in seconds[g])}
        for g in groups
    }
    rows = []
    for v in versions:
        row = [v]
        for g in groups:
            if v in times[g]:
                row += [spread(times[g][v], 1), f"{statistics.mean(by_group[g][v]):.3f}"]
            else:
                row += [None, None]
        rows.append(row)
    headers = ["version"] + [h for label in labels for h in (f"{label}: s", "reward")]
    print_table(headers, rows)
    base, *others = groups
    if not others:
        return
    print(
        f"\nat equal wall time: when each version of {labels[0]} exists (mean seconds), the "
        "latest evaluated version of each other loop that exists by then (by mean seconds) and "
        "the rewards (means):"
    )
    rows = []
    for v, t in times[base].items():
        t_mean = statistics.mean(t)
        row = [f"{t_mean:.1f}", f"v{v} {statistics.mean(by_group[base][v]):.3f}"]
        for g in others:
            ready = [u for u, s in times[g].items() if statistics.mean(s) <= t_mean]
            u = max(ready, default=None)
            row.append(None if u is None else f"v{u} {statistics.mean(by_group[g][u]):.3f}")
        rows.append(row)
    print_table(["s", *labels], rows)


def report(args, ours: list[dict], trl: list[dict], copy: tuple[int, float], parts) -> None:
    prompts = args.rounds * args.prompts_per_round
    print(
        f"\n{args.rounds} rounds x {args.prompts_per_round} prompts = {prompts} prompts, "
        f"{args.batch} prompts per optimizer step, up to {args.max_tokens} new tokens\n"
    )
    print("ours, one round (steady state: mean of rounds 1..; round 0 shown apart):")
    print_table(
        ["job", "pairs/round", *PHASES, "other+ckpt", "round s", "round 0 s", "sync share"],
        [
            [
                o["name"],
                o["preferences"],
                *(f"{o['phases'][p]:.3f}" for p in PHASES),
                f"{o['round'] - sum(o['phases'].values()):.3f}",
                f"{o['round']:.2f}",
                f"{o['round0']:.2f}",
                f"{100 * o['sync_share']:.1f}%",
            ]
            for o in ours
        ],
    )
    print("  (other+ckpt: building and writing the round's tables, metrics, DeepSpeed checkpoint)")
    nbytes, rate = copy
    print(f"\nweight sync: {ours[0]['sync_bytes'] / 1e6:.2f} MB per sync")
    for o in ours:
        print(
            f"  {o['name']}: {o['sync_rate'] / 1e6:.1f} MB/s (median over rounds); "
            f"{100 * o['sync_share']:.1f}% of a round (target < 5%)"
        )
    print(
        f"  in-memory clone of the same tensors ({nbytes / 1e6:.2f} MB) in one process: "
        f"{rate / 1e6:.0f} MB/s -> sync runs at {ours[0]['sync_rate'] / rate:.4f}x of a memory copy"
    )
    if parts:
        print_sync_parts(parts, rate)
    rows = []
    for o in ours:
        rows.append(
            [
                o["name"],
                o["startup"],
                o["loop"],
                o["total"],
                o["prompts"] / o["loop"],
                o["prompts"] / o["total"],
            ]
        )
    for t in trl:
        s = t["seconds"]
        rows.append(
            [
                t["name"],
                s["start-up"],
                s["train"] + s["save"],
                t["total"],
                prompts / (s["train"] + s["save"]),
                prompts / t["total"],
            ]
        )
    if len({o["lag"] for o in ours}) > 1:
        print("\nasynchronous rounds (rounds.max_staleness; last round's lag shown):")
        base = ours[0]
        print_table(
            ["job", "lag", "prompts/s (work)", "vs staleness 0", "round s", "final reward"],
            [
                [
                    o["name"],
                    o["lag"],
                    f"{o['prompts'] / o['loop']:.1f}",
                    f"{o['prompts'] / o['loop'] / (base['prompts'] / base['loop']):.2f}x",
                    f"{o['round']:.2f}",
                    f"{o['reward']:.3f}",
                ]
                for o in ours
            ],
        )
        by_lag: dict[tuple[int, int], list[dict]] = {}
        for o in ours:
            by_lag.setdefault((o["lag"], o["prompts"]), []).append(o)
        if any(len(runs) > 1 for runs in by_lag.values()):  # several seeds: the spread
            for (lag, job_prompts), runs in sorted(by_lag.items()):
                rates = [o["prompts"] / o["loop"] for o in runs]
                rewards = [o["reward"] for o in runs]
                rounds = f", {job_prompts // args.prompts_per_round} rounds"
                print(
                    f"  lag {lag}{rounds if job_prompts != prompts else ''}, {len(runs)} runs: "
                    f"prompts/s {statistics.mean(rates):.1f} (mean), final held-out reward "
                    f"{statistics.mean(rewards):.3f} (range {min(rewards):.3f}-{max(rewards):.3f})"
                )
        if args.eval_every < args.rounds:
            print(
                f"  (held-out prompts sampled every {args.eval_every} round(s): "
                f"{args.eval_prompts} prompts x K samples more in those rounds, so these prompts/s "
                "are not the benchmark's throughput; measure that with --eval-every >= --rounds)"
            )
    if args.eval_every == 1 and ours:
        report_by_version(ours)
    print("\none-time start-up (not in 'work'):")
    for o in ours:
        sec = o["result"]["seconds"]
        parts = ", ".join(
            f"{k} {sec[k]:.1f}s" for k in ("ray start", "engine load", "trainer start") if k in sec
        )
        print(f"  {o['name']}: {o['startup']:.1f}s ({parts}; engine load: reference + sampler)")
    for t in trl:
        print(f"  {t['name']}: {t['seconds']['start-up']:.1f}s (model loads, trainer init)")
    print(
        "\nprompts processed per second (work: rounds + checkpoints for ours; train + save "
        "for TRL):"
    )
    print_table(
        ["job", "start-up s", "work s", "total s", "prompts/s (work)", "prompts/s (total)"], rows
    )
    if trl:
        print("\nratios, ours / TRL (prompts/s; > 1: we are faster; target > 1):")
        print_table(
            ["ours", "vs", "work", "total (incl. start-up)"],
            [
                [o[0], t[0], f"{o[4] / t[4]:.2f}x", f"{o[5] / t[5]:.2f}x"]
                for o in rows[: len(ours)]
                for t in rows[len(ours) :]
            ],
        )


def staleness_rounds(value: str, rounds: int) -> tuple[int, int]:
    """(staleness, rounds) of one ``--max-staleness`` entry: ``S`` (``rounds`` rounds) or
    ``S:R``."""
    staleness, _, own_rounds = value.partition(":")
    try:
        return int(staleness), int(own_rounds or rounds)
    except ValueError:
        raise SystemExit(
            f"--max-staleness: {value!r} is not S or S:R (staleness S, R rounds), e.g. 0,1,1:8"
        ) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--prompts-per-round", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="prompts per optimizer step")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--k", default="2,4", help="our samples per prompt, one job each")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--trl", default="gc,no-gc", help="TRL variants: gc, no-gc, or none")
    parser.add_argument("--no-sync-parts", action="store_true")
    parser.add_argument(
        "--max-staleness",
        default="0",
        help="rounds.max_staleness values, one job of ours each; S:R runs staleness S for R "
        "rounds instead of --rounds (e.g. 0,1,1:8)",
    )
    parser.add_argument(
        "--seeds", default="0", help="seeds of our staleness jobs: one job per staleness and seed"
    )
    parser.add_argument(
        "--eval-prompts", type=int, default=1, help="held-out prompts per round (K samples each)"
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=1,
        help="rounds between held-out samplings (round 0 always)",
    )
    parser.add_argument(
        "--disaggregate", action="store_true", help="samplers on core 0, the rest on core 1"
    )
    parser.add_argument(
        "--sync-only", action="store_true", help="only the sync parts: object store vs broadcast"
    )
    parser.add_argument("--quick", action="store_true", help="2 x 32 prompts; K=2; TRL no-gc")
    parser.add_argument("--workdir", help="runs and logs (default: a new temp dir)")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # internal: run one job and exit
    args = parser.parse_args(argv)
    if args.job:
        job = json.loads(args.job)
        emit({"ours": ours_job, "trl": trl_job, "sync-parts": sync_parts_job}[job["kind"]](job))
        return
    if args.quick:
        args.rounds, args.prompts_per_round, args.k, args.trl = 2, 32, "2", "no-gc"
        args.no_sync_parts = True
    from rlhf.task import build_tiny_model

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="online_dpo-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    model = str(build_tiny_model())
    common = {
        "model": model,
        "rounds": args.rounds,
        "prompts_per_round": args.prompts_per_round,
        "batch": args.batch,
        "ranks": args.ranks,
        "max_tokens": args.max_tokens,
        "beta": args.beta,
        "lr": args.lr,
    }
    if args.sync_only:
        job = {**common, "kind": "sync-parts", "repeats": 10, "out": str(workdir / "sync")}
        parts = run_job(Path(__file__), job, workdir / "sync-parts.log")
        nbytes, rate = memory_copy_rate(model)
        print(f"weight sync: {parts['bytes'] / 1e6:.2f} MB; in-memory copy {rate / 1e6:.0f} MB/s")
        print_sync_parts(parts, rate)
        return
    jobs: list[tuple[str, dict[str, Any]]] = []
    trl_variants = [v for v in args.trl.split(",") if v and v != "none"]
    ks = [int(k) for k in args.k.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    settings = [staleness_rounds(v, args.rounds) for v in args.max_staleness.split(",")]
    variants = [(staleness, rounds, seed) for staleness, rounds in settings for seed in seeds]
    if len(variants) > 1:  # the comparison: one K, one job per staleness and seed
        ks = ks[:1] * len(variants)
    for i in range(max(len(ks), len(trl_variants))):  # alternate ours and TRL
        if i < len(trl_variants):
            gc = trl_variants[i] == "gc"
            name = "TRL OnlineDPO, K=2" + (" (grad. ckpt: default)" if gc else " (no grad. ckpt)")
            jobs.append((name, {"kind": "trl", "gradient_checkpointing": gc}))
        if i < len(ks):
            staleness, rounds, seed = variants[i] if len(variants) > 1 else variants[0]
            name = f"ours K={ks[i]}, {args.ranks} ranks" + (
                f", staleness {staleness}" if staleness or len(variants) > 1 else ""
            )
            name += f", {rounds} rounds" if rounds != args.rounds else ""
            name += f", seed {seed}" if len(seeds) > 1 else ""
            job = {"kind": "ours", "k": ks[i], "max_staleness": staleness, "seed": seed}
            job["rounds"] = rounds
            job["eval_prompts"] = args.eval_prompts
            job["eval_every"] = args.eval_every
            jobs.append((name, {**job, "disaggregate": args.disaggregate}))
    results = {}
    stamp = time.strftime("%Y%m%d-%H%M%S")  # fresh run dirs in a reused workdir
    for index, (name, job) in enumerate(jobs):
        out = workdir / f"{stamp}-{index}-{job['kind']}"
        results[name] = run_job(
            Path(__file__), {**common, **job, "out": str(out)}, workdir / f"{out.name}.log"
        )
        print(f"  {name}: {results[name]['total']:.1f}s", flush=True)
    parts = None
    if not args.no_sync_parts:
        job = {**common, "kind": "sync-parts", "repeats": 10, "out": str(workdir / "sync")}
        parts = run_job(Path(__file__), job, workdir / f"{stamp}-sync-parts.log")
    copy = memory_copy_rate(model)
    ours = [ours_summary(n, r) for n, r in results.items() if n.startswith("ours")]
    trl = [{"name": n, **r} for n, r in results.items() if not n.startswith("ours")]
    report(args, ours, trl, copy, parts)
    print(f"\nlogs and runs: {workdir}")


if __name__ == "__main__":
    main()

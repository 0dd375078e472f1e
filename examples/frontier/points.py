"""The frontier's measurements, without Ray, vLLM or DeepSpeed: every checkpoint of a run is
loaded into a Hugging Face model and sampled on the same held-out prompts, and each point is
(KL to the reference, reward), each with its standard error.

    points = evaluate_run(run_dir, reference_dir, prompts, settings)   # one per checkpoint
    write_csv(rows, "frontier.csv"); plot(rows, "frontier.png")

KL(pi || pi_ref) of whole responses, two ways on the same samples:
  - ``kl``: the sum over response tokens of the exact per-token KL over the vocabulary
    (``rlhf.algorithms.sequence_kl``): >= 0 for every sample, its mean unbiased for the
    sequence KL (chain rule), not dominated by a few unlikely sampled tokens.
  - ``kl_k1``: the paper's quantity as usually estimated, the mean of the summed log-ratio
    log pi(y|x) - log pi_ref(y|x) of each sample; kept with its spread (quantiles), since single
    samples of it can be negative or very large.
Standard errors are over prompts (each prompt's K samples averaged first), since the K samples
of one prompt are not independent of each other's prompt.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf.algorithms import sequence_kl

COLUMNS = ("algorithm", "setting", "step", "kl", "kl_stderr", "reward", "reward_stderr")
DETAIL_COLUMNS = (
    *COLUMNS,
    "kl_k1",
    "kl_k1_stderr",
    "kl_k1_p10",
    "kl_k1_p50",
    "kl_k1_p90",
    "kl_k1_negative",
    "kl_p90",
    "response_length",
)
MODEL_STATES = "mp_rank_00_model_states.pt"  # DeepSpeed's file of the module's weights
GROUPS = ("policy", "trainer")  # the trained group's name in PPO's and the DPO loops' checkpoints


@dataclass(frozen=True)
class EvalSettings:
    """How each point is measured: K samples per prompt at temperature 1, up to max_tokens."""

    samples_per_prompt: int = 4
    max_tokens: int = 48
    batch_size: int = 256  # sequences per generate / forward pass
    seed: int = 0


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, weights file) of every complete checkpoint of a run, by step.

    The loops save ``checkpoints/step_<N>/<group>/<tag>/mp_rank_00_model_states.pt`` or
    ``.../<group>/mp_rank_00_model_states.pt`` (DeepSpeed's layout); ``keep_checkpoints`` must
    be large enough that the run kept them all.
    """
    found = []
    for step_dir in sorted((run_dir / "checkpoints").glob("step_*")):
        if step_dir.name.endswith(".tmp"):
            continue
        for group in GROUPS:
            files = sorted((step_dir / group).rglob(MODEL_STATES))
            if files:
                found.append((int(step_dir.name.removeprefix("step_")), files[0]))
                break
    return found


def load_policy(reference_dir: str | Path, weights: Path | None):
    """The reference model's architecture with a checkpoint's weights (None: the reference)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(reference_dir), dtype=torch.float32)
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        module = state.get("module", state) if isinstance(state, dict) else state
        missing, unexpected = model.load_state_dict(
            {k: v.float() for k, v in module.items()}, strict=False
        )
        if unexpected or [k for k in missing if not k.endswith("rotary_emb.inv_freq")]:
            raise ValueError(
                f"{weights}: its weights do not fit the model in {reference_dir} (missing "
                f"{missing[:3]}, unexpected {unexpected[:3]}); was it trained from that model?"
            )
    return model.eval()


@dataclass
class Samples:
    """K samples of each prompt: prompt ids, response ids (EOS included when it ended), text."""

    prompt_index: list[int]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    texts: list[str]


def sample(model, tokenizer, prompts: Sequence[str], settings: EvalSettings) -> Samples:
    """Samples K responses per prompt at temperature 1 (no top-k, top-p), with fixed seeds."""
    out = Samples([], [], [], [])
    jobs = [i for i in range(len(prompts)) for _ in range(settings.samples_per_prompt)]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for start in range(0, len(jobs), settings.batch_size):
        chunk = jobs[start : start + settings.batch_size]
        encoded = [tokenizer(prompts[i])["input_ids"] for i in chunk]
        length = max(len(ids) for ids in encoded)
        input_ids = torch.tensor([[pad] * (length - len(ids)) + ids for ids in encoded])
        starts = torch.tensor([[length - len(ids)] for ids in encoded])
        attention_mask = (torch.arange(length) >= starts).long()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(settings.seed + start)
            generated = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=settings.max_tokens,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                eos_token_id=eos,
                pad_token_id=pad,
            )
        for i, ids, row in zip(chunk, encoded, generated[:, length:].tolist(), strict=True):
            response = row[: row.index(eos) + 1] if eos in row else row
            out.prompt_index.append(i)
            out.prompt_ids.append(ids)
            out.response_ids.append(response)
            out.texts.append(tokenizer.decode(response, skip_special_tokens=True))
    return out


def response_logits(model, samples: Samples, batch_size: int) -> list[torch.Tensor]:
    """[len(response), V] next-token logits at the positions predicting each response token."""
    result = []
    for start in range(0, len(samples.texts), batch_size):
        rows = [
            (p, r)
            for p, r in zip(
                samples.prompt_ids[start : start + batch_size],
                samples.response_ids[start : start + batch_size],
                strict=True,
            )
        ]
        length = max(len(p) + len(r) for p, r in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for n, (p, r) in enumerate(rows):  # right padding, positions stay right
            ids[n, : len(p) + len(r)] = torch.tensor(p + r)
            mask[n, : len(p) + len(r)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        for n, (p, r) in enumerate(rows):
            result.append(logits[n, len(p) - 1 : len(p) + len(r) - 1])
    return result


def measure(
    policy,
    reference,
    tokenizer,
    prompts: Sequence[str],
    reward_fn: Callable[[list[str], list[str]], list[float]],
    settings: EvalSettings,
) -> dict[str, float]:
    """One point: reward and KL(policy || reference) on the policy's own samples of prompts."""
    samples = sample(policy, tokenizer, prompts, settings)
    rewards = reward_fn([prompts[i] for i in samples.prompt_index], samples.texts)
    exact, k1 = [], []
    pol = response_logits(policy, samples, settings.batch_size)
    ref = response_logits(reference, samples, settings.batch_size)
    for logits, ref_logits, response in zip(pol, ref, samples.response_ids, strict=True):
        if not response:  # max_tokens 0 or an immediate stop without EOS: nothing to compare
            exact.append(0.0)
            k1.append(0.0)
            continue
        exact.append(
            float(sequence_kl(logits[None], ref_logits[None], torch.ones(1, len(response)))[0])
        )
        token = torch.tensor(response)[:, None]
        log_ratio = logits.log_softmax(-1).gather(1, token) - ref_logits.log_softmax(-1).gather(
            1, token
        )
        k1.append(float(log_ratio.sum()))
    index = samples.prompt_index
    q = statistics.quantiles(k1, n=10) if len(k1) > 1 else [k1[0]] * 9
    return {
        "kl": statistics.mean(exact),
        "kl_stderr": prompt_stderr(exact, index),
        "reward": statistics.mean(rewards),
        "reward_stderr": prompt_stderr(rewards, index),
        "kl_k1": statistics.mean(k1),
        "kl_k1_stderr": prompt_stderr(k1, index),
        "kl_k1_p10": q[0],
        "kl_k1_p50": q[4],
        "kl_k1_p90": q[8],
        "kl_k1_negative": sum(v < 0 for v in k1) / len(k1),
        "kl_p90": statistics.quantiles(exact, n=10)[8] if len(exact) > 1 else exact[0],
        "response_length": statistics.mean(len(r) for r in samples.response_ids),
    }


def prompt_stderr(values: Sequence[float], prompt_index: Sequence[int]) -> float:
    """Standard error of the mean of ``values``, with the samples of each prompt averaged first
    (prompts are the independent units); NaN with fewer than two prompts."""
    groups: dict[int, list[float]] = {}
    for value, i in zip(values, prompt_index, strict=True):
        groups.setdefault(i, []).append(value)
    means = [statistics.mean(g) for g in groups.values()]
    return statistics.stdev(means) / math.sqrt(len(means)) if len(means) > 1 else math.nan


def evaluate_run(
    algorithm: str,
    setting: str,
    run_dir: Path,
    reference,
    reference_dir: str | Path,
    tokenizer,
    prompts: Sequence[str],
    reward_fn: Callable[[list[str], list[str]], list[float]],
    settings: EvalSettings,
) -> list[dict]:
    """One row per checkpoint of ``run_dir`` (columns ``DETAIL_COLUMNS``); same prompts, seeds."""
    found = checkpoints(Path(run_dir))
    if not found:
        raise FileNotFoundError(
            f"{run_dir}: no checkpoints/step_*/<policy|trainer>/**/{MODEL_STATES}; train it with "
            "a save interval and keep_checkpoints large enough to keep them all"
        )
    cache_file = Path(run_dir) / "frontier_points.json"  # measured points, by checkpoint
    key = json.dumps([list(prompts), dataclasses.asdict(settings)])
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    if cache.get("key") != key:
        cache = {"key": key, "points": {}}
    rows = []
    for step, weights in found:
        point = cache["points"].get(str(step))
        if point is None:
            policy = load_policy(reference_dir, weights)
            point = measure(policy, reference, tokenizer, prompts, reward_fn, settings)
            cache["points"][str(step)] = point
            cache_file.write_text(json.dumps(cache))
        rows.append({"algorithm": algorithm, "setting": setting, "step": step, **point})
    return rows


def frontier(rows: Sequence[dict]) -> list[dict]:
    """The upper-left frontier of one algorithm's points: those that no other point beats with
    at most their KL and more reward (a staircase; sorted by KL)."""
    best = -math.inf
    kept = []
    for row in sorted(rows, key=lambda r: (r["kl"], -r["reward"])):
        if row["reward"] > best:
            kept.append(row)
            best = row["reward"]
    return kept


def reward_at_kl(rows: Sequence[dict], budget: float) -> float | None:
    """The highest reward among points with KL <= budget (the frontier's value there)."""
    within = [r["reward"] for r in rows if r["kl"] <= budget]
    return max(within) if within else None


def write_csv(rows: Sequence[dict], path: Path, columns: Sequence[str] = COLUMNS) -> None:
    """The rows with exactly ``columns`` (floats to 5 significant digits)."""
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row[c]) for c in columns])


def read_rows(path: Path) -> list[dict]:
    """The rows of a file :func:`write_csv` wrote (``frontier_detail.csv``) back, numbers as
    numbers."""
    with Path(path).open() as f:
        return [
            {k: v if k in ("algorithm", "setting") else float(v) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def _cell(value):
    return f"{value:.5g}" if isinstance(value, float) else value


def plot(rows: Sequence[dict], path: Path, title: str = "") -> None:
    """The paper's figure: every point of every algorithm (KL on x, reward on y), each
    algorithm's frontier drawn as a line through its points, error bars of one standard error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for n, name in enumerate(dict.fromkeys(r["algorithm"] for r in rows)):
        color = f"C{n}"
        mine = [r for r in rows if r["algorithm"] == name]
        ax.errorbar(
            [r["kl"] for r in mine],
            [r["reward"] for r in mine],
            xerr=[r["kl_stderr"] for r in mine],
            yerr=[r["reward_stderr"] for r in mine],
            fmt="o",
            markersize=3,
            alpha=0.45,
            color=color,
            elinewidth=0.6,
        )
        edge = frontier(mine)
        ax.plot([r["kl"] for r in edge], [r["reward"] for r in edge], "-", color=color, label=name)
    ax.set(
        xlabel="KL(policy || reference), nats per response",
        ylabel="mean reward (held-out prompts)",
        title=title or "reward vs KL: every checkpoint, frontier per algorithm",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""A weight sync you can trust: the sync probe and the samplers' mismatch with the trainer.

The probe: after every sync, one sampler (sampler ``round % num_engines``, so every engine takes
its turn) and trainer rank 0 score the same few fixed sequences, per token. Held by the same
weights, the two agree up to the numerics of two implementations (vLLM and Hugging Face: about
5e-7 in fp32 on this project's CPUs); a sync that did not land (skipped, sent to a restarted
engine, loaded into the wrong layers) leaves them as far apart as one round of training moves
the policy. The largest difference is the round's ``sync/logp_max_abs_diff``; above
``samplers.sync_probe.tolerance`` the round stops with a :class:`SyncMismatchError` naming the
engine and the weights version it holds. The sequences are a handful of held-out samples
(prompt + response token ids) of the first round the job runs, fixed from then on.

The mismatch: ``rollout/mismatch_kl`` is the mean k3 estimate of KL(sampler || trainer) over the
sampled tokens of a round's training samples (:func:`mismatch_kl`; formulas in
``docs/algorithms.md``). The trainer scores them before it trains, on the weights the samplers
sampled with (a round sampled ahead, ``rounds.max_staleness`` > 0, compares older weights, and
the metric then also measures that lag).

Both are settings of ``samplers.sync_probe`` (:class:`SyncProbeConfig`) and cost one forward
pass of a few sequences (the probe) and of the round's training samples (the mismatch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rlhf.algorithms.kl import kl_estimate
from rlhf.config import ConfigError
from rlhf.driver.retry import bounded_get, ranks

# The default tolerance of the probe by model.dtype: vLLM and Hugging Face agree to about 5e-7
# per token in fp32; in 16-bit floats the two kernels' roundings differ by far more.
DEFAULT_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.1, "float16": 0.1}


@dataclass
class SyncProbeConfig:
    """``samplers.sync_probe``: the check after every weight sync (``rlhf.driver.sync_probe``)."""

    enabled: bool = True
    # Largest allowed |log-prob difference| of one token between a sampler and trainer rank 0;
    # null: 1e-3 for model.dtype float32, 0.1 for bfloat16 and float16.
    tolerance: float | None = None
    sequences: int = 4  # held-out samples of the first round scored after every sync
    # Also the round's rollout/mismatch_kl (a forward pass of its training samples on the
    # trainers before they train).
    mismatch_kl: bool = True

    def validate(self) -> None:
        if self.tolerance is not None and not self.tolerance > 0:
            raise ConfigError(
                f"tolerance must be > 0 (or null: by model.dtype), got {self.tolerance}"
            )
        if self.sequences < 1:
            raise ConfigError(f"sequences must be at least 1, got {self.sequences}")

    def tolerance_for(self, dtype: str) -> float:
        """The tolerance set, or the default for ``dtype`` (``model.dtype``)."""
        return self.tolerance if self.tolerance is not None else DEFAULT_TOLERANCE[dtype]


class SyncMismatchError(RuntimeError):
    """A sampler's log-probs differ from the trainer's after a sync: its weights are not the
    trainer's. The message names the engine and the weights version it says it holds."""


def max_abs_diff(a: list[list[float]], b: list[list[float]]) -> float:
    """The largest |a - b| over all positions of equally shaped lists of lists."""
    diffs = [
        abs(x - y)
        for row_a, row_b in zip(a, b, strict=True)
        for x, y in zip(row_a, row_b, strict=True)
    ]
    return max(diffs, default=0.0)


def mismatch_kl(sampler_logps: list[list[float]], trainer_logps: list[list[float]]) -> float:
    """Mean over all tokens of the k3 estimate of KL(mu || pi), for tokens sampled from mu.

    ``sampler_logps[i][t]``: log mu of response i's token t (the sampler's, as it sampled);
    ``trainer_logps[i][t]``: log pi of the same token under the trainer's weights. With
    r = log pi - log mu, k3 = exp(r) - 1 - r >= 0 (0 when the two agree; ``kl_estimate``'s k3
    with mu in the place of the policy); its mean over tokens drawn from mu estimates
    KL(mu || pi) per token without bias.
    """
    for i, (row_mu, row_pi) in enumerate(zip(sampler_logps, trainer_logps, strict=True)):
        if len(row_mu) != len(row_pi):
            raise ValueError(
                f"response {i}: {len(row_mu)} sampler log-probs but {len(row_pi)} trainer ones"
            )
    mu = torch.tensor([x for row in sampler_logps for x in row], dtype=torch.float64)
    pi = torch.tensor([x for row in trainer_logps for x in row], dtype=torch.float64)
    return float(kl_estimate(mu, pi, "k3").mean()) if len(mu) else 0.0


def response_logps(per_token: list[float], response_length: int) -> list[float]:
    """The last ``response_length`` entries of a sequence's per-token log-probs (tokens 1..L-1,
    as ``token_logprobs`` returns them): those of its response tokens."""
    return per_token[len(per_token) - response_length :] if response_length else []


@dataclass
class SyncProbe:
    """The probe of one job: its fixed sequences (set by :meth:`fix`), tolerance and bound.

    Args:
        tolerance: the largest allowed difference (``SyncProbeConfig.tolerance_for``).
        count: how many sequences :meth:`fix` keeps.
        timeout_s: the bound of its calls (``ray.call_timeout_s``).
    """

    tolerance: float
    count: int
    timeout_s: float
    sequences: list[list[int]] = field(default_factory=list)

    def fix(self, groups: list[Any]) -> None:
        """Keeps the first completion (prompt + response ids) of the first ``count`` groups, once;
        later calls keep the sequences the first one fixed."""
        if self.sequences:
            return
        for group in groups:
            completion = group.completions[0]
            sequence = list(completion.prompt_ids) + list(completion.token_ids)
            if len(sequence) >= 2:
                self.sequences.append(sequence)
            if len(self.sequences) == self.count:
                break

    def check(self, trainers, samplers: list, round_index: int) -> dict[str, float]:
        """Scores the sequences on sampler ``round_index % len(samplers)`` and the trainers;
        returns ``{"sync/logp_max_abs_diff": ...}``, or raises :class:`SyncMismatchError`
        above the tolerance."""
        index = round_index % len(samplers)
        sampler, name = samplers[index], f"sampler {index}"
        refs = [sampler.token_logprobs.remote(self.sequences), sampler.held_version.remote()]
        refs += trainers.call("token_logprobs", self.sequences)
        names = [name, name, *ranks("trainer", len(trainers))]
        got = bounded_get(refs, names, self.timeout_s, "sync probe")
        engine, version, trained = got[0], got[1], got[2]
        diff = max_abs_diff(engine, trained)
        if diff > self.tolerance:
            raise SyncMismatchError(
                f"sync probe after round {round_index}: {name} holds weights labelled version "
                f"{version}, but its log-probs of {len(self.sequences)} fixed sequences differ "
                f"from trainer rank 0's by up to {diff:.3g} (samplers.sync_probe.tolerance: "
                f"{self.tolerance:g}): the last weight sync did not reach its engine. Look in "
                f"the sampler's log for a failed load; if the engine and trainer only compute "
                f"differently (another dtype or kernel), raise samplers.sync_probe.tolerance"
            )
        return {"sync/logp_max_abs_diff": diff}


@dataclass
class PendingMismatch:
    """``rollout/mismatch_kl`` of a round, scored by the trainers in the background
    (:func:`start_mismatch_kl`); :meth:`get` waits for it."""

    refs: list  # one per trainer rank: the log-probs of its share, in rank order
    completions: list  # the completions scored, in order

    def get(self, timeout_s: float) -> float:
        """The mismatch KL, once the trainers have answered (``timeout_s`` at most)."""
        if not self.completions:
            return 0.0
        names = ranks("trainer", len(self.refs))
        shares = bounded_get(self.refs, names, timeout_s, "mismatch KL")
        per_token = [logps for share in shares for logps in share]
        trainer = [
            response_logps(lp, len(c.token_ids))
            for lp, c in zip(per_token, self.completions, strict=True)
        ]
        return mismatch_kl([c.token_logprobs for c in self.completions], trainer)


def start_mismatch_kl(trainers, groups: list[Any]) -> PendingMismatch:
    """Starts the trainers scoring every completion (prompt + response) of these scored groups,
    to compare with the sampler's own log-probs of its tokens; each rank scores a contiguous
    share. The ranks run calls in order, so the log-probs are those of the weights before any
    call submitted after this one."""
    completions = [c for g in groups for c in g.completions if c.token_ids and c.token_logprobs]
    sequences = [list(c.prompt_ids) + list(c.token_ids) for c in completions]
    if not completions:
        return PendingMismatch([], completions)
    n = len(trainers.actors)
    bounds = [len(sequences) * rank // n for rank in range(n + 1)]
    shares = [sequences[bounds[rank] : bounds[rank + 1]] for rank in range(n)]
    most = max(len(share) for share in shares)
    refs = [
        actor.share_token_logprobs.remote(share, most)
        for actor, share in zip(trainers.actors, shares, strict=True)
    ]
    return PendingMismatch(refs, completions)

"""Reference log-probs from the reference server (vLLM ``prompt_logprobs`` by default), in
chunks that are all submitted at once so the engine batches them; results come back in order.

Offline DPO computes them once per table and caches them on disk with it; online DPO and PPO
ask every round for the round's samples, and start the request (:func:`start_token_logps`,
:func:`start_response_logps`) before the reward scores them, so the two run side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from rlhf.driver.retry import bounded_get


def response_logps(
    server,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    chunk: int = 512,
    timeout_s: float | None = None,
) -> list[float]:
    """Summed reference log-probs of each response given its prompt.

    Each chunk's answer is waited for ``timeout_s`` at most (None: no bound); a server that
    dies or does not answer is named (``rlhf.driver.retry.bounded_get``)."""
    return start_response_logps(server, prompt_ids, response_ids, chunk, timeout_s).get()


def start_response_logps(
    server,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    chunk: int = 512,
    timeout_s: float | None = None,
) -> PendingLogps:
    """:func:`response_logps`, asked now and waited for by the answer's ``get``."""
    return PendingLogps.ask(server.response_logps, (prompt_ids, response_ids), chunk, timeout_s)


def token_logps(
    server, sequences: list[list[int]], chunk: int = 512, timeout_s: float | None = None
) -> list[list[float]]:
    """Per-token reference log-probs of each sequence: L - 1 floats for tokens 1..L-1."""
    return start_token_logps(server, sequences, chunk, timeout_s).get()


def start_token_logps(
    server, sequences: list[list[int]], chunk: int = 512, timeout_s: float | None = None
) -> PendingLogps:
    """:func:`token_logps`, asked now and waited for by the answer's ``get``."""
    return PendingLogps.ask(server.token_logprobs, (sequences,), chunk, timeout_s)


class PendingLogps:
    """Reference log-probs asked of a server, chunk by chunk, all chunks submitted at once.

    :meth:`get` waits for them in order (each chunk ``timeout_s`` at most) and keeps the
    answer, so a second ``get`` returns it at once; ``then`` reshapes the answer on the way.
    """

    def __init__(self, refs: list, total: int, timeout_s: float | None) -> None:
        self.refs, self.total, self.timeout_s = refs, total, timeout_s
        self.shape: Callable[[list], Any] = list
        self.answer: Any = None  # set by the first get

    @classmethod
    def ask(
        cls, method, columns: tuple[list, ...], chunk: int, timeout_s: float | None
    ) -> PendingLogps:
        """``method.remote`` on each chunk of the columns (rows ``i .. i + chunk``)."""
        total = len(columns[0])
        refs = [
            method.remote(*(column[i : i + chunk] for column in columns))
            for i in range(0, total, chunk)
        ]
        return cls(refs, total, timeout_s)

    def then(self, shape: Callable[[list], Any]) -> PendingLogps:
        """The same request, whose answer ``get`` passes through ``shape`` (once)."""
        self.shape = shape
        return self

    def get(self) -> Any:
        """The log-probs of every row, in order, once the server has answered them all."""
        if self.answer is None:
            out: list = []
            with tqdm(total=self.total, desc="reference log-probs", unit="seq", leave=False) as bar:
                for ref in self.refs:
                    name, what = ["the reference"], "reference log-probs"
                    (part,) = bounded_get([ref], name, self.timeout_s, what)
                    out.extend(part)
                    bar.update(len(part))
            self.answer = self.shape(out)
        return self.answer


class SamplersReference:
    """The reference served by the samplers' own engines (``reference.backend: base``): with
    LoRA the engines hold the base model and add the policy's adapter per request, so asked
    without it they score the base model, which is the reference; no reference server starts.

    It answers :func:`response_logps` and :func:`token_logps` as a server actor would, spreading
    the chunks over the samplers. ``adapter=True`` scores with the samplers' current adapter
    instead: the moving reference (``reference_update: previous_round``), which is the policy
    that sampled the round, before it trains.
    """

    def __init__(self, samplers: list, adapter: bool = False) -> None:
        self.samplers, self.adapter = list(samplers), adapter
        self.token_logprobs = _Spread(self, "token_logprobs")
        self.response_logps = _Spread(self, "response_logps")
        self.calls = 0  # chunks asked so far: chunk i goes to sampler i mod the samplers


class _Spread:
    """``method.remote(*args)`` on the next sampler, with the reference's ``adapter``."""

    def __init__(self, reference: SamplersReference, method: str) -> None:
        self.reference, self.method = reference, method

    def remote(self, *args):
        ref = self.reference
        sampler = ref.samplers[ref.calls % len(ref.samplers)]
        ref.calls += 1
        return getattr(sampler, self.method).remote(*args, adapter=ref.adapter)


def reference_server(reference):
    """The actor holding the reference's weights (one that a sync may move), or None when the
    samplers serve the reference (:class:`SamplersReference`)."""
    return None if isinstance(reference, SamplersReference) else reference


def moving_reference(reference):
    """The reference when it follows the policy (``reference_update: previous_round``): the
    server actor, which every sync then updates; or None for the samplers' reference, which
    from now on scores with the samplers' current adapter (the policy that sampled the round)."""
    if isinstance(reference, SamplersReference):
        reference.adapter = True
        return None
    return reference

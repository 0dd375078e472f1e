"""Reference log-probs from the reference server (vLLM ``prompt_logprobs`` by default), in
chunks that are all submitted at once so the engine batches them; results come back in order.

Offline DPO computes them once per table and caches them on disk with it; online DPO and PPO
ask every round for the round's samples.
"""

from __future__ import annotations

import ray
from tqdm import tqdm


def response_logps(
    server, prompt_ids: list[list[int]], response_ids: list[list[int]], chunk: int = 512
) -> list[float]:
    """Summed reference log-probs of each response given its prompt."""
    return _chunked(server.response_logps, (prompt_ids, response_ids), chunk)


def token_logps(server, sequences: list[list[int]], chunk: int = 512) -> list[list[float]]:
    """Per-token reference log-probs of each sequence: L - 1 floats for tokens 1..L-1."""
    return _chunked(server.token_logprobs, (sequences,), chunk)


def _chunked(method, columns: tuple[list, ...], chunk: int) -> list:
    total = len(columns[0])
    refs = [
        method.remote(*(column[i : i + chunk] for column in columns))
        for i in range(0, total, chunk)
    ]
    out: list = []
    with tqdm(total=total, desc="reference log-probs", unit="seq", leave=False) as bar:
        for ref in refs:
            part = ray.get(ref)
            out.extend(part)
            bar.update(len(part))
    return out

"""Reference log-probs for a tokenized preference table: computed once by the reference server
(vLLM ``prompt_logprobs`` by default), then cached on disk with the table."""

from __future__ import annotations

import ray
from tqdm import tqdm


def response_logps(
    server, prompt_ids: list[list[int]], response_ids: list[list[int]], chunk: int = 512
) -> list[float]:
    """Summed reference log-probs of each response given its prompt, in chunks with progress.

    All chunks are submitted at once so the engine batches them; results come back in order.
    """
    refs = [
        server.response_logps.remote(prompt_ids[i : i + chunk], response_ids[i : i + chunk])
        for i in range(0, len(prompt_ids), chunk)
    ]
    out: list[float] = []
    with tqdm(total=len(prompt_ids), desc="reference log-probs", unit="seq", leave=False) as bar:
        for ref in refs:
            part = ray.get(ref)
            out.extend(part)
            bar.update(len(part))
    return out

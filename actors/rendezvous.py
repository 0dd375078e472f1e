"""Where the ranks of one group meet. Plain data without torch: ``actors.group`` hands it to
every actor it starts, and each unpickles it (a module importing torch here cost each of
them seconds of CPU)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Rendezvous:
    """Where the ranks of one group meet: a port free on rank 0's node address, and a secret.

    Rank 0 hosts the group's store on ``host:port`` (``actors.deepspeed_rank.join_ranks``),
    listening on that address alone (127.0.0.1 in a local run, where Ray runs on loopback).
    The store has no authentication of its own, so every key of the group lies under
    ``secret`` (a fresh 128-bit one per group, handed to the ranks by Ray in their constructor
    arguments): a process that reaches the port without it cannot meet the ranks. Plain data
    (no Ray): a script builds one, e.g. ``Rendezvous("127.0.0.1", port)`` for one rank.
    """

    host: str
    port: int
    secret: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)

"""Every config key does something: each field of every job's config classes is read somewhere.

Found by introspection and a search of the source: a field ``name`` counts as read when
``.name`` appears in ``rlhf/`` or ``actors/`` outside the ``validate`` methods of its own class
(a key only its own checks look at does nothing). Keys that were removed say what replaced
them (``REMOVED_KEYS``), tested in ``tests/test_config.py`` and ``tests/models/``.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path
from typing import get_type_hints

REPO = Path(__file__).resolve().parent.parent
CHECKS_ONLY = ("validate", "_batch_keys")  # methods that only check the fields they read


def job_configs() -> list[type]:
    from rlhf.driver.dpo import DPOConfig
    from rlhf.driver.make_data import MakeDataConfig
    from rlhf.driver.online_dpo import OnlineDPOConfig
    from rlhf.driver.ppo import PPOConfig
    from rlhf.driver.sample import SampleJobConfig

    return [DPOConfig, OnlineDPOConfig, PPOConfig, SampleJobConfig, MakeDataConfig]


def unread_keys(roots: list[type], sources: dict[str, str]) -> list[str]:
    """``Class.field`` for every field of the config class trees under ``roots`` that no source
    text reads outside its class's own checks."""
    unread, seen = [], set()

    def walk(cls: type) -> None:
        if cls in seen:
            return
        seen.add(cls)
        checks = [
            inspect.getsource(klass.__dict__[name])
            for klass in cls.__mro__
            for name in CHECKS_ONLY
            if name in klass.__dict__
        ]
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name])
            read = re.compile(rf"\.{f.name}\b")
            if not any(read.search(_without(text, checks)) for text in sources.values()):
                unread.append(f"{cls.__name__}.{f.name}")

    for root in roots:
        walk(root)
    return unread


def _without(text: str, parts: list[str]) -> str:
    for part in parts:
        text = text.replace(part, "")
    return text


def test_every_key_of_every_job_config_is_read() -> None:
    sources = {
        str(path): path.read_text()
        for folder in ("rlhf", "actors")
        for path in (REPO / folder).rglob("*.py")
    }
    assert unread_keys(job_configs(), sources) == []


def test_an_unread_key_is_found() -> None:
    @dataclasses.dataclass
    class Section:
        used: int = 1
        dead: bool = True  # only its own check looks at it

        def validate(self) -> None:
            if self.dead and self.used < 0:
                raise ValueError("never")

    sources = {"driver.py": "def run(cfg):\n    return cfg.section.used\n"}
    assert unread_keys([Section], sources) == ["Section.dead"]

"""An on-disk cache of tokenized preference tables with their reference log-probs.

Reference log-probs cost a full forward pass over the data; the cache keeps the table that holds
them, so a second run (or epoch) never recomputes them. The key hashes everything the table
depends on: the model, the data file (path, size and mtime, or its content), the tokenization
settings, and :data:`rlhf.data.table.FORMAT_VERSION`. Files are Arrow IPC, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from rlhf.data.table import FORMAT_VERSION
from rlhf.files import atomic_path

_KEY = re.compile(r"[0-9a-f]{16,128}")
_KEY_METADATA = b"rlhf.data.cache_key"


def cache_key(
    model_id: str,
    data_path: str | Path,
    settings: Mapping[str, Any],
    *,
    content_hash: bool = False,
    format_version: int = FORMAT_VERSION,
) -> str:
    """The cache key of a table: a hex digest of model, data file, settings and format version.

    ``model_id`` names the reference model (and its tokenizer, if that can differ). The file
    counts by resolved path, size and mtime, or by a hash of its bytes (``content_hash=True``:
    slower, but survives copies and touches). ``settings`` must be JSON-serializable.
    """
    path = Path(data_path).resolve()
    stat = path.stat()
    if content_hash:
        file_id: dict[str, Any] = {"sha256": _file_digest(path), "size": stat.st_size}
    else:
        file_id = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    identity = {
        "model": model_id,
        "data": file_id,
        "settings": dict(settings),
        "format_version": format_version,
    }
    try:
        text = json.dumps(identity, sort_keys=True)
    except TypeError as error:
        raise ValueError(f"cache_key: settings must be JSON-serializable: {error}") from None
    return hashlib.sha256(text.encode()).hexdigest()


def cache_path(cache_dir: str | Path, key: str) -> Path:
    """The file that holds the table of ``key``."""
    if not _KEY.fullmatch(key):
        raise ValueError(f"cache key {key!r} is not a hex digest from cache_key()")
    return Path(cache_dir) / f"preferences-{key}.arrow"


def load_cached(cache_dir: str | Path, key: str) -> pa.Table | None:
    """The cached table of ``key``, or None when there is none (or it cannot be read)."""
    path = cache_path(cache_dir, key)
    if not path.is_file():
        return None
    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
    except (pa.ArrowException, OSError) as error:
        warnings.warn(f"ignoring unreadable cache file {path}: {error}", stacklevel=2)
        return None
    if (table.schema.metadata or {}).get(_KEY_METADATA) != key.encode():
        warnings.warn(f"ignoring cache file {path}: it was written for another key", stacklevel=2)
        return None
    return table


def save_cached(cache_dir: str | Path, key: str, table: pa.Table) -> Path:
    """Writes ``table`` under ``key`` (temporary file, then ``os.replace``); returns its path."""
    path = cache_path(cache_dir, key)
    metadata = dict(table.schema.metadata or {})
    metadata[_KEY_METADATA] = key.encode()
    table = table.replace_schema_metadata(metadata)
    with (
        atomic_path(path) as temp,
        pa.OSFile(str(temp), "wb") as sink,
        pa.ipc.new_file(sink, table.schema) as writer,
    ):
        writer.write_table(table)
    return path


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

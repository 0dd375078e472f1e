"""An on-disk cache of tokenized preference tables with their reference log-probs.

Reference log-probs cost a full forward pass over the data; the cache keeps the table that holds
them, so a second run (or epoch) never recomputes them. The key hashes everything the table
depends on: the model's files (:func:`model_fingerprint`: weights, config and tokenizer, so a
model retrained in place is a miss), the data file (path, size and mtime, or its content), the
tokenization and scoring settings, and :data:`rlhf.data.table.FORMAT_VERSION`. Files are Arrow
IPC, written atomically.
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

HASHED_FILE_BYTES = 16 * 2**20  # model files up to this size count by content, larger by stat


def model_fingerprint(model: str | Path) -> dict[str, Any]:
    """What a model's log-probs and tokens depend on, cheaply: every file of its directory.

    Each file counts by relative name and size, plus a SHA-256 of its bytes when it is at most
    :data:`HASHED_FILE_BYTES` (config, tokenizer, small weights) or its mtime when larger (big
    weight shards: rewriting one changes its mtime). So a model retrained or replaced in the same
    directory gets another fingerprint. Hidden entries (``.cache``, ``.git``) do not count. A
    hub name counts by the snapshot Hugging Face has cached for it (its path names the commit),
    or by the name alone when nothing is cached.
    """
    directory = Path(model)
    if not directory.is_dir():
        directory = _hub_snapshot(str(model))
        if directory is None:
            return {"name": str(model)}
    files = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        stat = path.stat()  # follows symlinks: the hub cache links snapshot files to blobs
        entry: dict[str, Any] = {"size": stat.st_size}
        if stat.st_size <= HASHED_FILE_BYTES:
            entry["sha256"] = _file_digest(path)
        else:
            entry["mtime_ns"] = stat.st_mtime_ns
        files[relative.as_posix()] = entry
    return {"name": str(model), "files": files}


def _hub_snapshot(name: str) -> Path | None:
    """The locally cached snapshot of hub model ``name`` (never downloads), or None."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not a hub name, not cached, or no huggingface_hub: the name alone
        return None


def cache_key(
    model_id: str | Mapping[str, Any],
    data_path: str | Path,
    settings: Mapping[str, Any],
    *,
    content_hash: bool = False,
    format_version: int = FORMAT_VERSION,
) -> str:
    """The cache key of a table: a hex digest of model, data file, settings and format version.

    ``model_id`` identifies the reference model and its tokenizer: a driver passes
    :func:`model_fingerprint` of the model path, so the key changes with the weights. The file
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
        "model": model_id if isinstance(model_id, str) else dict(model_id),
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

"""The reference log-probs column and the on-disk cache: keys, round trips, atomic writes."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from rlhf.data import (
    DataConfig,
    DataReport,
    batches,
    cache_key,
    collate,
    load_cached,
    load_preferences,
    report_of,
    save_cached,
    with_ref_logps,
)
from rlhf.data.table import build_table

from .helpers import BOS, EOS, V


def _table() -> pa.Table:
    report = DataReport("data/prefs.jsonl", "line", rows_read=3, rows_kept=2)
    report.skipped = {"empty response": 1}
    return build_table([1, 3], [[1, 4], [1, 5]], [[[6, 2], [7, 2]], [[8, 2], [9, 2]]], report)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text('{"prompt": "hi", "chosen": "yes", "rejected": "no"}\n')
    return path


def test_cache_key_changes_with_everything_the_table_depends_on(data_file):
    settings = DataConfig(path=str(data_file)).table_settings()
    key = cache_key("model-a", data_file, settings)
    assert key == cache_key("model-a", data_file, dict(settings))
    assert key != cache_key("model-b", data_file, settings)
    assert key != cache_key("model-a", data_file, {**settings, "max_length": 1024})
    assert key != cache_key("model-a", data_file, {**settings, "prompt_truncation": "left"})
    assert key != cache_key("model-a", data_file, settings, format_version=999)
    stat = data_file.stat()
    os.utime(data_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert key != cache_key("model-a", data_file, settings)  # touched: mtime changed


def test_content_hash_key_ignores_touch_but_not_content(data_file):
    key = cache_key("m", data_file, {}, content_hash=True)
    stat = data_file.stat()
    os.utime(data_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert cache_key("m", data_file, {}, content_hash=True) == key
    data_file.write_text('{"prompt": "hi", "chosen": "yes", "rejected": "on"}\n')  # same size
    assert cache_key("m", data_file, {}, content_hash=True) != key


def test_cached_table_round_trips(tmp_path, data_file):
    table = with_ref_logps(_table(), [[-1.5, -2.0], [-0.25, -4.0]])
    key = cache_key("m", data_file, {})
    cache_dir = tmp_path / "cache"
    assert load_cached(cache_dir, key) is None
    path = save_cached(cache_dir, key, table)
    assert os.listdir(cache_dir) == [path.name]  # the temporary file was renamed, not left
    loaded = load_cached(cache_dir, key)
    assert loaded.equals(table)
    assert loaded.schema.field("ref_logps").type == pa.list_(pa.float32())
    assert loaded.column("ref_logps").to_pylist() == [[-1.5, -2.0], [-0.25, -4.0]]
    assert report_of(loaded).skipped == {"empty response": 1}
    assert load_cached(cache_dir, cache_key("other", data_file, {})) is None


def test_unreadable_or_foreign_cache_file_is_a_miss(tmp_path):
    key, other = "ab" * 32, "cd" * 32
    (tmp_path / f"preferences-{key}.arrow").write_bytes(b"not arrow")
    with pytest.warns(UserWarning, match="ignoring unreadable cache file"):
        assert load_cached(tmp_path, key) is None
    save_cached(tmp_path, other, _table())
    os.replace(tmp_path / f"preferences-{other}.arrow", tmp_path / f"preferences-{key}.arrow")
    with pytest.warns(UserWarning, match="written for another key"):
        assert load_cached(tmp_path, key) is None
    with pytest.raises(ValueError, match="is not a hex digest"):
        load_cached(tmp_path, "../../etc/passwd")


def test_with_ref_logps_checks_lengths():
    table = _table()
    with pytest.raises(ValueError, match="ref_logps has 1 rows, the preference table 2"):
        with_ref_logps(table, [[-1.0, -2.0]])
    with pytest.raises(
        ValueError, match=r"ref_logps\[1\] \(data/prefs.jsonl line 3\): 3 values for 2 responses"
    ):
        with_ref_logps(table, [[-1.0, -2.0], [-1.0, -2.0, -3.0]])
    with pytest.raises(ValueError, match=r"ref_logps\[0\] \(data/prefs.jsonl line 1\): nan"):
        with_ref_logps(table, [[float("nan"), -2.0], [-1.0, -2.0]])
    once = with_ref_logps(table, [[-1.0, -2.0], [-3.0, -4.0]])
    twice = with_ref_logps(once, [[-5.0, -6.0], [-7.0, -8.0]])  # replaces the column
    assert twice.column_names.count("ref_logps") == 1
    assert twice.column("ref_logps").to_pylist() == [[-5.0, -6.0], [-7.0, -8.0]]


def test_second_run_reads_the_cache_instead_of_recomputing(tokenizer, write_jsonl, tmp_path):
    path = write_jsonl(
        [
            {"prompt": "hi", "chosen": " yes", "rejected": " no"},
            {"prompt": "the cat", "chosen": " sat", "rejected": " bad"},
        ]
    )
    cfg = DataConfig(path=str(path), cache_dir=str(tmp_path / "cache"))
    key = cache_key("model-a", path, cfg.table_settings())
    computed = []

    def prepare() -> pa.Table:  # what a driver does
        table = load_cached(cfg.cache_dir, key)
        if table is None:
            table, _ = load_preferences(path, tokenizer, cfg)
            computed.append(table.num_rows)
            table = with_ref_logps(table, [[-1.0, -2.0], [-3.0, -4.0]])  # the reference actor
            save_cached(cfg.cache_dir, key, table)
        return table

    first, second = prepare(), prepare()
    assert computed == [2] and second.equals(first)
    (indices,) = batches(second, batch_size=2, seed=0, epoch=0, shuffle=False)
    batch = collate(second.take(indices), tokenizer.pad_token_id)
    assert batch.ref_logps.tolist() == [-1.0, -2.0, -3.0, -4.0]
    assert batch.input_ids[2].tolist() == [BOS, V["the"], V["cat"], V["sat"], EOS]
    assert batch.input_ids[0].tolist() == [BOS, V["hi"], V["yes"], EOS, tokenizer.pad_token_id]


def test_model_fingerprint_changes_when_the_model_is_replaced_in_place(tmp_path, data_file):
    from rlhf.data.cache import model_fingerprint
    from tests.models.tiny_llama import build_tiny_llama

    model = build_tiny_llama(tmp_path / "sft", seed=0)
    first = model_fingerprint(model)
    assert "model.safetensors" in first["files"] and "tokenizer.json" in first["files"]
    assert model_fingerprint(model) == first  # stable while nothing changes
    (model / ".cache").mkdir()
    (model / ".cache" / "note").write_text("hub download state")
    assert model_fingerprint(model) == first  # hidden entries do not count
    key = cache_key(first, data_file, {})
    build_tiny_llama(model, seed=1)  # retrained in place: same names and sizes, other weights
    second = model_fingerprint(model)
    assert second["files"].keys() == first["files"].keys()
    assert (
        second["files"]["model.safetensors"]["size"] == first["files"]["model.safetensors"]["size"]
    )
    assert second["files"]["model.safetensors"] != first["files"]["model.safetensors"]
    assert cache_key(second, data_file, {}) != key
    config = model / "tokenizer_config.json"
    config.write_text(config.read_text().replace("}", ', "model_max_length": 7}', 1))
    assert model_fingerprint(model) != second  # a tokenizer setting changed


def test_model_fingerprint_counts_large_files_by_mtime(tmp_path, monkeypatch):
    from rlhf.data import cache

    monkeypatch.setattr(cache, "HASHED_FILE_BYTES", 4)
    (tmp_path / "config.json").write_text("{}")  # 2 bytes: hashed
    shard = tmp_path / "model-00001-of-00002.safetensors"
    shard.write_bytes(b"0123456789")  # 10 bytes: counted by size and mtime
    first = cache.model_fingerprint(tmp_path)
    assert set(first["files"]["config.json"]) == {"size", "sha256"}
    assert first["files"][shard.name] == {"size": 10, "mtime_ns": shard.stat().st_mtime_ns}
    stat = shard.stat()
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert cache.model_fingerprint(tmp_path) != first


def test_hub_name_without_a_local_snapshot_counts_by_name(monkeypatch):
    from rlhf.data.cache import model_fingerprint

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert model_fingerprint("no-such-org/no-such-model") == {"name": "no-such-org/no-such-model"}

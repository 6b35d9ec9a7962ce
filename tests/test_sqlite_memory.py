"""SQLite's heap on /metrics (qkd_sqlite_memory_bytes) against a real key store file: it grows as the file is
filled and read through a large page cache, and stays near [keystore] cache_mib when that is small."""
from __future__ import annotations

import os
import time
import uuid

import pytest

from qkdd.config import ConfigError, load_config
from qkdd.keystore import KeyStore, KeyStoreError
from qkdd.metrics import Metrics
from qkdd.sqlite_memory import available, sqlite_memory_bytes

pytestmark = pytest.mark.skipif(not available(), reason="this Python's SQLite library has no sqlite3_status64")

LINK = "link-1"
MIB = 1 << 20
KEY_BYTES = 1024                   # the longest keys a link stores: few rows, many pages
KEYS_PER_FRAME = 400
FRAMES = 40                        # 16 MB of key material, ~17 MiB of file


def used_bytes() -> int:
    return sqlite_memory_bytes()[0]


def scraped_bytes(metrics: Metrics) -> float:
    for line in metrics.exposition().decode().splitlines():
        if line.startswith("qkd_sqlite_memory_bytes "):
            return float(line.split()[1])
    raise AssertionError("qkd_sqlite_memory_bytes is not on /metrics")


def fill(store: KeyStore, frames: range) -> list[str]:
    key_ids = []
    for frame_id in frames:
        keys = [(str(uuid.uuid4()), os.urandom(KEY_BYTES)) for _ in range(KEYS_PER_FRAME)]
        store.put_pending(LINK, frame_id, keys, expires_at=time.time() + 3600)
        store.commit_frame(LINK, frame_id)
        key_ids += [key_id for key_id, _ in keys]
    return key_ids


def test_sqlite_memory_grows_with_a_filled_and_read_store_under_a_large_cache(tmp_path):
    metrics = Metrics()
    path = str(tmp_path / "keys.sqlite3")
    baseline = used_bytes()
    store = KeyStore(path, bytes(32), cache_mib=64)
    key_ids = fill(store, range(FRAMES // 4))
    quarter = used_bytes() - baseline
    key_ids += fill(store, range(FRAMES // 4, FRAMES))
    full = used_bytes() - baseline
    file_bytes = os.path.getsize(path)
    assert file_bytes > 16 * MIB
    assert quarter > 2 * MIB and full > 3 * quarter         # the cache takes the pages as the file grows
    assert full > 0.6 * file_bytes
    assert abs(scraped_bytes(metrics) - (full + baseline)) < 2 * MIB
    store.close()
    assert used_bytes() - baseline < 2 * MIB                  # closing the connection frees its cache

    store = KeyStore(path, bytes(32), cache_mib=64)           # a cold cache, filled by reading (opening checks
    for key_id in key_ids:                                    # the store, which reads most of it already)
        assert len(store.peek(LINK, key_id).material) == KEY_BYTES
    assert used_bytes() - baseline > 0.6 * file_bytes
    store.close()


def test_sqlite_memory_stays_near_a_small_cache_as_the_store_grows(tmp_path):
    path = str(tmp_path / "keys.sqlite3")
    baseline = used_bytes()
    store = KeyStore(path, bytes(32), cache_mib=1)
    key_ids = fill(store, range(FRAMES // 4))
    quarter = used_bytes() - baseline
    key_ids += fill(store, range(FRAMES // 4, FRAMES))
    for key_id in key_ids[::7]:
        store.peek(LINK, key_id)
    full = used_bytes() - baseline
    assert os.path.getsize(path) > 16 * MIB
    # 1 MiB of pages plus SQLite's per-page headers, the schema and prepared statements: about 1.5 MiB
    assert full < 3 * MIB and quarter < 3 * MIB
    assert store.database.connection.execute("PRAGMA cache_size").fetchone()[0] == -1024
    store.close()


@pytest.mark.parametrize("cache_mib", [0, -1, 1 << 21, True, 1.5])
def test_the_store_refuses_a_page_cache_that_is_not_a_whole_positive_number_of_mib(tmp_path, cache_mib):
    with pytest.raises(KeyStoreError, match="page cache must be a whole number of MiB"):
        KeyStore(str(tmp_path / "keys.sqlite3"), bytes(32), cache_mib=cache_mib)


def test_the_daemons_store_takes_cache_mib_from_the_configuration(tmp_path):
    from qkdd.link.service import open_keystore

    config_file = tmp_path / "qkdd.toml"
    config_file.write_text("[keystore]\ncache_mib = 8\n")
    config = load_config(str(config_file), environ={})
    assert config.keystore.cache_mib == 8
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    store = open_keystore(str(state_dir), config.keystore)
    assert store.database.connection.execute("PRAGMA cache_size").fetchone()[0] == -8 * 1024
    store.close()
    for bad, error in (("0", "must be in [1, 1048576], got 0"), ('"64M"', "must be an integer")):
        config_file.write_text(f"[keystore]\ncache_mib = {bad}\n")
        with pytest.raises(ConfigError, match=rf"keystore\.cache_mib: {error}".replace("[", r"\[")):
            load_config(str(config_file), environ={})

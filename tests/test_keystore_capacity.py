"""Key store capacity and write failures on real SQLite files: the fill each link holds (kept by every method,
checked against a recount), StoreFull at the bounds, SQLite errors as StoreWriteError (a lock held by
another connection, a really full tmpfs), and the store writing again once the cause is gone."""
import os
import random
import sqlite3
import time
import uuid

import pytest

from qkdd.config import KeystoreConfig
from qkdd.keystore import (KeyState, KeyStore, KeyStoreError, StoreCapacity, StoreFull, StoreWriteError,
                           create_kek)
from qkdd.keystore.resync import plan_resync
from tests.store_support import fill_disk, free_bytes, small_tmpfs

LINK, OTHER = "link-ab", "link-cd"
HELD = ("pending", "available", "reserved")


def new_keys(n, nbytes=32):
    return [(str(uuid.uuid4()), os.urandom(nbytes)) for _ in range(n)]


def recount(path: str) -> dict[str, int]:
    """Each link's key bits in the states that hold material, counted from the rows by another connection."""
    with sqlite3.connect(path) as db:
        return dict(db.execute(f"SELECT link_id, SUM(bits) FROM keys WHERE state IN {HELD} GROUP BY link_id"))


def fills(store: KeyStore) -> dict[str, int]:
    return {link: store.fill(link).key_bits for link in (LINK, OTHER) if store.fill(link).key_bits}


def test_every_method_keeps_the_fill_equal_to_a_recount(tmp_path):
    path = str(tmp_path / "keys.db")
    store = KeyStore(path, bytes(32))
    rng = random.Random(5)
    now = time.time()
    frames: dict[str, list[list[str]]] = {LINK: [], OTHER: []}
    for step in range(120):
        link = rng.choice((LINK, OTHER))
        action = rng.randrange(9)
        ids = [key_id for frame in frames[link] for key_id in frame]
        if action <= 2 or not ids:
            keys = new_keys(rng.randrange(1, 6), rng.choice((8, 32, 64)))
            frame_id = len(frames[link])
            store.put_pending(link, frame_id, keys, expires_at=now + rng.choice((-10, 3600)),
                              allocatable=[rng.random() < 0.5 for _ in keys])
            frames[link].append([key_id for key_id, _ in keys])
            if rng.random() < 0.7:
                store.commit_frame(link, frame_id)
            elif rng.random() < 0.5:
                store.discard_frame(link, frame_id)
        elif action == 3:
            try:
                store.reserve_available(link, 1, "h")
            except KeyStoreError:
                pass
        elif action == 4:
            try:
                store.take_bits(link, 8, 300)
            except KeyStoreError:
                pass
        elif action == 5:
            try:
                store.deliver(link, rng.choice(ids))
            except KeyStoreError:
                pass
        elif action == 6:
            reserved = store.reserved_for(link, "h")
            if reserved:
                store.release(link, reserved[:1])
        elif action == 7:
            local = store.inventory(link)
            remote = {key_id: state for key_id, state in local.items() if rng.random() < 0.6}
            plan = plan_resync(local, remote)
            store.apply_resync(link, plan.promote, plan.discard, plan.expire)
        else:
            store.expire(now)
            store.purge_tombstones(now + 7200)
        assert fills(store) == {k: v for k, v in recount(path).items() if v}, step
    assert sum(fills(store).values()) > 0
    store.close()


def test_a_fill_gone_wrong_is_counted_afresh_when_the_store_opens(tmp_path):
    """A version that did not keep the fill table may have written: opening recounts it."""
    path = str(tmp_path / "keys.db")
    store = KeyStore(path, bytes(32))
    store.put_pending(LINK, 1, new_keys(3), expires_at=time.time() + 3600)
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE fill SET key_bits = 7")
        db.execute("INSERT INTO fill VALUES ('ghost', 99)")
    store = KeyStore(path, bytes(32))
    assert store.fill(LINK).key_bits == 3 * 256 and store.fill("ghost").key_bits == 0
    store.close()


def test_a_link_at_its_key_bits_stores_no_further_frame_until_keys_go(tmp_path):
    store = KeyStore(str(tmp_path / "keys.db"), bytes(32), capacity=StoreCapacity(max_key_bits=8192))
    now = time.time()
    stored = []
    for frame_id in range(4):                              # 0, 2560, 5120, 7680 bits held before each
        keys = new_keys(10)
        store.put_pending(LINK, frame_id, keys, expires_at=now + 3600)
        store.commit_frame(LINK, frame_id)
        stored += [key_id for key_id, _ in keys]
    fill = store.fill(LINK)
    assert fill.key_bits == 10240 and fill.full and fill.ratio == 10240 / 8192    # one frame past, no more
    with pytest.raises(StoreFull, match=f"link {LINK} holds 10240 key bits of 8192") as refused:
        store.put_pending(LINK, 9, new_keys(10), expires_at=now + 3600)
    assert refused.value.fill.key_bits == 10240
    assert store.counts(LINK)[KeyState.PENDING] == 0                     # nothing of the refused frame
    store.put_pending(OTHER, 1, new_keys(10), expires_at=now + 3600)     # the bound is per link
    for key_id in stored[:8]:                                            # handed out: 8192 bits held
        store.deliver(LINK, key_id)
    with pytest.raises(StoreFull):
        store.put_pending(LINK, 9, new_keys(10), expires_at=now + 3600)
    store.deliver(LINK, stored[8])
    assert not store.fill(LINK).full
    store.put_pending(LINK, 9, new_keys(10), expires_at=now + 3600)
    assert store.fill(LINK).key_bits == 7936 + 2560
    store.close()


def test_the_store_at_its_bytes_refuses_frames_of_every_link(tmp_path):
    store = KeyStore(str(tmp_path / "keys.db"), bytes(32), capacity=StoreCapacity(max_bytes=1 << 20))
    now = time.time()
    with pytest.raises(StoreFull) as refused:
        for frame_id in range(1000):
            store.put_pending(LINK, frame_id, new_keys(100), expires_at=now + 3600)
    fill = refused.value.fill
    assert fill.store_bytes >= 1 << 20 and fill.full and fill.ratio >= 1.0
    assert fill.store_bytes < (1 << 20) + 200_000                         # one frame past at most
    with pytest.raises(StoreFull, match="the store takes"):
        store.put_pending(OTHER, 1, new_keys(1), expires_at=now + 3600)
    store.close()


def test_the_daemons_store_takes_the_keystore_capacity_of_the_configuration(tmp_path):
    from qkdd.link.service import open_keystore

    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    store = open_keystore(str(state_dir), KeystoreConfig(max_key_bits=16384, max_bytes=4 << 20))
    assert store.capacity == StoreCapacity(max_key_bits=16384, max_bytes=4 << 20)
    store.close()
    assert open_keystore(str(state_dir)).capacity == StoreCapacity()      # consumers that only read and take
    assert KeystoreConfig() == KeystoreConfig(max_key_bits=1 << 28, max_bytes=1 << 30)
    with pytest.raises(ValueError, match="max_bytes must be 0"):
        StoreCapacity(max_bytes=4096)


def test_a_write_refused_by_sqlite_is_a_store_write_error_and_the_store_writes_again_after(tmp_path):
    """Another connection holds the write lock: the store's writes fail as StoreWriteError (not a raw sqlite3
    error, no key material in it), its reads go on, and once the lock is gone it writes again."""
    path = str(tmp_path / "keys.db")
    store = KeyStore(path, bytes(32))
    keys = new_keys(4)
    store.put_pending(LINK, 1, keys, expires_at=time.time() + 3600)
    store.commit_frame(LINK, 1)
    store._db.execute("PRAGMA busy_timeout = 50")          # fail fast instead of waiting 30 s for the lock
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    fresh = new_keys(2)
    for write in (lambda: store.put_pending(LINK, 2, fresh, expires_at=time.time() + 3600),
                  lambda: store.commit_frame(LINK, 1), lambda: store.deliver(LINK, keys[0][0]),
                  lambda: store.take_bits(LINK, 256), store.probe_write, store.expire):
        with pytest.raises(StoreWriteError) as failed:
            write()
        assert not failed.value.disk_full and "locked" in failed.value.reason
        assert not isinstance(failed.value, sqlite3.Error)
        assert all(material.hex() not in str(failed.value) for _, material in keys + fresh)
    assert store.counts(LINK)[KeyState.AVAILABLE] == 4 and store.fill(LINK).key_bits == 4 * 256   # reads go on
    blocker.execute("ROLLBACK")
    blocker.close()
    store.put_pending(LINK, 2, fresh, expires_at=time.time() + 3600)
    assert store.deliver(LINK, keys[0][0]).material == keys[0][1]
    assert store.fill(LINK).key_bits == 5 * 256 == recount(path)[LINK]
    store.close()


def test_a_really_full_disk_is_a_disk_full_write_error_and_freed_space_writes_again(tmp_path):
    """The store on a 3 MiB tmpfs next to a file that takes the rest: frames are stored until SQLite reports
    the disk full; nothing half-stored, reads and the fill go on; with the file gone the same store
    object writes again (no transaction was left open by the failed commit)."""
    with small_tmpfs(tmp_path, 3 << 20) as disk:
        path = str(disk / "keys.db")
        store = KeyStore(path, create_kek(str(tmp_path / "kek")))
        now = time.time()
        stored = 0
        filler = fill_disk(disk, leave_bytes=256 << 10)
        with pytest.raises(StoreWriteError) as failed:
            for frame_id in range(10_000):
                store.put_pending(LINK, frame_id, new_keys(50), expires_at=now + 3600)
                store.commit_frame(LINK, frame_id)
                stored += 1
        assert failed.value.disk_full and "full" in str(failed.value), failed.value
        assert stored > 0 and free_bytes(disk) < 1 << 20
        counts = store.counts(LINK)
        assert counts[KeyState.PENDING] in (0, 50)          # the frame whose commit failed, if it got that far
        assert counts[KeyState.AVAILABLE] == 50 * stored
        assert store.fill(LINK).key_bits == recount(path)[LINK]
        assert store.free_bytes() < 1 << 20
        os.remove(filler)
        assert store.free_bytes() > 2 << 20
        store.probe_write()
        store.put_pending(LINK, 10_001, new_keys(50), expires_at=now + 3600)
        assert store.commit_frame(LINK, 10_001) == 50
        assert store.fill(LINK).key_bits == recount(path)[LINK]
        store.close()


def test_the_frames_qber_is_kept_with_its_keys_and_an_older_store_gains_the_column(tmp_path):
    path = str(tmp_path / "keys.db")
    store = KeyStore(path, bytes(32))
    keys = new_keys(3)
    store.put_pending(LINK, 1, keys, expires_at=time.time() + 3600, qber=0.0231)
    store.commit_frame(LINK, 1)
    assert store.peek(LINK, keys[0][0]).qber == 0.0231
    assert store.deliver(LINK, keys[1][0]).qber == 0.0231
    assert [key.qber for key in store.take_bits(LINK, 256)] == [0.0231]
    store.put_pending(LINK, 2, new_keys(1), expires_at=time.time() + 3600)
    store.close()
    with sqlite3.connect(path) as db:                        # as the version before the column wrote it
        db.execute("ALTER TABLE keys DROP COLUMN qber")
    store = KeyStore(path, bytes(32))
    older = store.inventory(LINK)
    assert len(older) == 4
    pending = [key_id for key_id, state in older.items() if state is KeyState.PENDING]
    assert store.peek(LINK, pending[0]).qber is None
    store.close()

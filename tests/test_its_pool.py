"""The authentication pool in a real SQLite file: seeding once from the pre-shared secret file, no chunk
handed out twice (across restarts too), refills, metrics, and erased chunks gone from the files."""
import os

import pytest

from qkdd.auth import secret as auth_secret
from qkdd.auth.pool import AuthPool, AuthPoolError, PoolDry, PositionUnavailable
from qkdd.metrics import Metrics

KEK = bytes(range(32))


def open_pool(path, link_id="its-1", metrics=None):
    return AuthPool(str(path), KEK, link_id, metrics=metrics)


def test_secret_file_round_trip_and_refusals(tmp_path):
    secret = auth_secret.generate("its-1", 4096)
    path = tmp_path / "auth.secret"
    auth_secret.write(secret, str(path))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert auth_secret.load(str(path)) == secret
    with pytest.raises(FileExistsError):
        auth_secret.write(secret, str(path))
    path.chmod(0o644)
    with pytest.raises(auth_secret.AuthSecretError, match="chmod 0600"):
        auth_secret.load(str(path))
    bad = tmp_path / "bad.secret"
    bad.write_text("hello\n")
    bad.chmod(0o600)
    with pytest.raises(auth_secret.AuthSecretError, match="qkdctl auth secret"):
        auth_secret.load(str(bad))
    with pytest.raises(ValueError):
        auth_secret.generate("its-1", 1000)


def test_restart_resumes_without_reuse(tmp_path):
    secret = auth_secret.generate("its-1", 128 * 10)
    pool = open_pool(tmp_path / "pool.sqlite3")
    assert pool.seed(secret)
    first = pool.allocate(3)
    assert [pos for pos, _ in first] == [0, 1, 2]
    assert [chunk for _, chunk in first] == secret.chunks()[:3]
    pool.close()                                   # a restart: the same file, the same secret file again
    pool = open_pool(tmp_path / "pool.sqlite3")
    assert not pool.seed(secret)                   # never seeded twice: used chunks stay used
    assert pool.consumed_bits == 3 * 128 and pool.bits == 7 * 128
    again = pool.allocate(3)
    assert [pos for pos, _ in again] == [3, 4, 5]
    with pytest.raises(PositionUnavailable):
        pool.take([1])
    pool.close()


def test_another_secret_is_refused(tmp_path):
    pool = open_pool(tmp_path / "pool.sqlite3")
    pool.seed(auth_secret.generate("its-1", 128 * 10))
    with pytest.raises(AuthPoolError, match="remove"):
        pool.seed(auth_secret.generate("its-1", 128 * 10))
    with pytest.raises(AuthPoolError, match="for link"):
        pool.seed(auth_secret.generate("other", 128 * 10))
    pool.close()


def test_refills_at_announced_positions_and_take_is_all_or_nothing(tmp_path):
    pool = open_pool(tmp_path / "pool.sqlite3")
    pool.seed(auth_secret.generate("its-1", 128 * 12))
    position = pool.reserve_refill(2)
    assert position == 12 and pool.reserve_refill(1) == 14
    material = os.urandom(32)
    pool.refill(position, material)
    assert pool.take([12, 13]) == [material[:16], material[16:]]
    with pytest.raises(PositionUnavailable):
        pool.take([0, 12])                         # 12 is gone: 0 must stay
    assert 0 in pool.positions()
    with pytest.raises(PositionUnavailable):
        pool.refill(0, os.urandom(16))
    with pytest.raises(PoolDry):
        pool.allocate(100)
    assert pool.chunks == 12
    pool.close()


def test_metrics(tmp_path):
    metrics = Metrics()
    pool = open_pool(tmp_path / "pool.sqlite3", metrics=metrics.link("its-1"))
    pool.seed(auth_secret.generate("its-1", 128 * 12))
    pool.allocate(3)
    text = metrics.exposition().decode()
    assert 'qkd_auth_pool_bits{link_id="its-1"} 1152.0' in text
    assert 'qkd_auth_key_bits_consumed_total{link_id="its-1"} 384.0' in text
    pool.close()


def test_used_chunks_are_erased_from_the_files(tmp_path):
    path = tmp_path / "pool.sqlite3"
    pool = open_pool(path)
    pool.seed(auth_secret.generate("its-1", 128 * 12))
    import sqlite3
    with sqlite3.connect(path) as peek:
        sealed = [row[0] for row in peek.execute("SELECT sealed FROM chunks WHERE pos < 3")]
    pool.allocate(3)
    pool.checkpoint()
    pool.close()
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("pool.sqlite3"))
    assert data and not any(blob in data for blob in sealed)

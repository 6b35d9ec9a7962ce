"""1000 frames' transcript authentication between two real pools (SQLite files), with refills and some frames
whose transcript was altered: both ends spend and refill the same chunks at the same positions, so their
pools stay equal, and no chunk is ever handed out twice."""
import os
import random
import tempfile

import pytest

from qkdd.auth import secret as auth_secret
from qkdd.auth.pool import AuthPool
from qkdd.auth.wegman_carter import ALICE, BOB, CHUNK_BYTES, CHUNKS_PER_FRAME, AuthFailed, FrameAuthenticator

KEK = bytes(range(32))
FRAMES = 1000


def one_frame(pools, frame_id, rng, used):
    a, b = FrameAuthenticator(ALICE, frame_id, pools[ALICE]), FrameAuthenticator(BOB, frame_id, pools[BOB])
    altered = rng.random() < 0.1
    for index in range(rng.randrange(1, 6)):
        record = rng.randbytes(rng.randrange(1, 200))
        a.record(ALICE if index % 2 else BOB, record)
        b.record(ALICE if index % 2 else BOB, (b"x" + record[1:]) if altered and index == 0 else record)
    refill_chunks = rng.choice([0, 4, 6, 8, 8])   # a frame spends CHUNKS_PER_FRAME = 4
    part = a.seal_keys(b"keys", refill_chunks)
    positions = a.announced.positions
    assert not used & set(positions), "a chunk handed out twice"
    used.update(positions)
    try:
        announced = b.check_keys(b"keys", part)
    except AuthFailed:
        assert altered
        return False
    assert not altered
    distilled = os.urandom(refill_chunks * CHUNK_BYTES)         # the frame's first distilled bits, equal at both
    if refill_chunks:
        pools[BOB].refill(announced.refill_position, distilled)
    a.check_ack(b"ack", b.seal_ack(b"ack"))
    if refill_chunks:
        pools[ALICE].refill(a.announced.refill_position, distilled)
    b.check_commit(b"commit", a.seal_commit(b"commit"))
    return True


@pytest.fixture
def fast_dir(tmp_path):
    """A memory-backed directory where there is one (/dev/shm): this test is about the accounting, not the
    disk, and 5000 fsyncs on a loaded disk take half a minute. The files are the same SQLite files."""
    if os.access("/dev/shm", os.W_OK):
        with tempfile.TemporaryDirectory(dir="/dev/shm") as path:
            yield path
    else:
        yield str(tmp_path)


def test_a_thousand_frames_keep_both_pools_equal(fast_dir):
    rng = random.Random(2026)
    secret = auth_secret.generate("its-1", 128 * 64)
    pools = {role: AuthPool(os.path.join(fast_dir, f"{role}.sqlite3"), KEK, "its-1") for role in (ALICE, BOB)}
    for pool in pools.values():
        pool.seed(secret)
    used: set[int] = set()
    passed = 0
    for frame_id in range(FRAMES):
        if pools[ALICE].chunks < CHUNKS_PER_FRAME:
            break
        passed += one_frame(pools, frame_id, rng, used)
        if frame_id % 100 == 99:
            assert pools[ALICE].positions() == pools[BOB].positions()
    assert passed > 800 and frame_id == FRAMES - 1
    assert pools[ALICE].positions() == pools[BOB].positions()
    assert pools[ALICE].consumed_bits == pools[BOB].consumed_bits == 128 * CHUNKS_PER_FRAME * FRAMES
    assert pools[ALICE].bits == pools[BOB].bits > 0
    for pool in pools.values():
        pool.close()

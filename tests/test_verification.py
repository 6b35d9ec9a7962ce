"""Verification: the GF(2^64) polynomial hash against a pure-Python definition, both ends through
serialized messages catching single-bit and burst differences, leaked-bit accounting, bad messages."""
import math

import numpy as np
import pytest

from qkdd.bindings import bits
from qkdd.bindings.hash import gf64_mul, poly64_tags
from qkdd.postprocess import verification as ver
from qkdd.postprocess import wire
from qkdd.postprocess.wire import PeerMessageError

FIELD = (1 << 64) | 0x1B


def _gf64_mul_ref(a, b):
    product = 0
    for i in range(64):
        if b >> i & 1:
            product ^= a << i
    for bit in range(127, 63, -1):
        if product >> bit & 1:
            product ^= FIELD << (bit - 64)
    return product


def _tag_ref(frame_bits, key):
    n = len(frame_bits)
    words = bits.pack(frame_bits)
    acc = 0
    for word in [int(w) for w in words] + [n]:
        acc = _gf64_mul_ref(acc ^ word, key)
    return acc


def test_field_multiply_and_tag_match_the_definition():
    rng = np.random.default_rng(1)
    for _ in range(200):
        a, b = (int(v) for v in rng.integers(0, 2**63, 2, dtype=np.uint64) * 2 + rng.integers(0, 2, 2))
        assert gf64_mul(a, b) == gf64_mul(a, b, portable=True) == _gf64_mul_ref(a, b)
    for n in (0, 1, 64, 100, 1000):
        frame = rng.integers(0, 2, n, dtype=np.uint8)
        keys = np.array([12345678901234567, 2**64 - 5], dtype=np.uint64)
        tags = poly64_tags(bits.pack(frame) if n else np.zeros(0, np.uint64), n, keys)
        assert [int(t) for t in tags] == [_tag_ref(frame, int(k)) for k in keys]


def _exchange(frame_a, frame_b, n_bits, nkeys=1, frame_id=3):
    announcer = ver.Verification(ver.ANNOUNCER, frame_id, frame_a, n_bits, nkeys=nkeys)
    checker = ver.Verification(ver.CHECKER, frame_id, frame_b, n_bits)
    [announce] = announcer.start()
    [result] = checker.receive(announce)
    assert announcer.receive(result) == []
    assert announcer.result == checker.result
    return announcer.result


def test_equal_frames_match_and_tag_is_counted_as_leaked():
    n = 100_000
    frame = bits.pack(np.random.default_rng(2).integers(0, 2, n))
    result = _exchange(frame, frame.copy(), n)
    assert result.matched
    assert result.tag_bits == result.leaked_bits == 64
    two = _exchange(frame, frame.copy(), n, nkeys=2)
    assert two.matched and two.leaked_bits == 128


@pytest.mark.parametrize("flip", [[0], [99_999], [4_242], list(range(5000, 5064)), list(range(70_000, 71_000)),
                                  [10, 20_000, 90_000]])
def test_single_bit_and_burst_differences_are_caught(flip):
    n = 100_000
    values = np.random.default_rng(3).integers(0, 2, n, dtype=np.uint8)
    other = values.copy()
    other[flip] ^= 1
    for nkeys in (1, 2):
        assert not _exchange(bits.pack(values), bits.pack(other), n, nkeys=nkeys).matched


def test_collision_bound_is_blocks_over_two_to_the_tag_length():
    # (d + 1) / 2^64 with d = ceil(n / 64) data blocks and one length block, per independent key
    assert ver.collision_bound(64 * 1000, 1) == pytest.approx(1001 / 2**64)
    assert ver.collision_bound(10**6, 2) == pytest.approx((15626 / 2**64) ** 2)
    assert ver.keys_for(1e-15, 10**6) == 1
    assert ver.keys_for(1e-20, 10**6) == 2
    result = _exchange(np.zeros(16, np.uint64), np.zeros(16, np.uint64), 1000)
    assert result.epsilon_cor == pytest.approx(17 / 2**64)
    assert math.log2(1 / result.epsilon_cor) > 59


def test_bad_messages_raise_clear_errors():
    frame = np.arange(4, dtype=np.uint64)
    announcer = ver.Verification(ver.ANNOUNCER, 8, frame, 250)
    [announce] = announcer.start()
    payload = bytes(announce[wire.HEADER_BYTES:])

    def checker(n_bits=250):
        return ver.Verification(ver.CHECKER, 8, frame, n_bits)

    with pytest.raises(PeerMessageError, match="truncated"):
        checker().receive(announce[:10])
    with pytest.raises(PeerMessageError, match="truncated"):
        checker().receive(announce[:-3])
    with pytest.raises(PeerMessageError, match="past its declared payload"):
        checker().receive(announce + b"x")
    with pytest.raises(PeerMessageError, match="frame 9"):
        checker().receive(wire.encode(ver.ANNOUNCE, 9, 0, payload))
    with pytest.raises(PeerMessageError, match="out-of-order"):
        checker().receive(wire.encode(ver.ANNOUNCE, 8, 2, payload))
    with pytest.raises(PeerMessageError, match="250 bits, this end has 251"):
        checker(251).receive(announce)
    with pytest.raises(PeerMessageError, match="oversized"):
        checker().receive(wire.encode(ver.ANNOUNCE, 8, 0, bytes(4096)))
    with pytest.raises(PeerMessageError, match="keys"):
        checker().receive(wire.encode(ver.ANNOUNCE, 8, 0, payload[:8] + b"\x09" + payload[9:]))
    with pytest.raises(PeerMessageError, match="version"):
        checker().receive(announce[:4] + b"\x02" + announce[5:])
    with pytest.raises(PeerMessageError, match="unexpected RESULT"):
        checker().receive(wire.encode(ver.RESULT, 8, 0, bytes(16)))
    good = checker()
    [result] = good.receive(announce)
    with pytest.raises(PeerMessageError, match="duplicate"):
        good.receive(announce)
    with pytest.raises(PeerMessageError, match="match flag"):
        announcer.receive(result[:-8] + b"\x02" + bytes(7))
    # a bad peer message ends the exchange: the frame is discarded, later messages are refused
    assert announcer.state == ver.FAILED
    with pytest.raises(PeerMessageError, match="already failed: RESULT: malformed match flag"):
        announcer.receive(result)
    with pytest.raises(ver.VerificationStateError):
        announcer.start()
    with pytest.raises(ver.VerificationStateError):
        checker().result


def test_wrong_buffers_raise():
    with pytest.raises(ValueError):
        ver.Verification(ver.ANNOUNCER, 1, np.zeros(1, np.uint64), 65)
    with pytest.raises(TypeError):
        ver.Verification(ver.ANNOUNCER, 1, np.zeros(2, np.int32), 10)
    with pytest.raises(ValueError):
        poly64_tags(np.zeros(2, np.uint64), 10, np.zeros(5, np.uint64))

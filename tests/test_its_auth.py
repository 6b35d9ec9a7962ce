"""Wegman-Carter authentication: the GF(2^64) polynomial hash family against hand-derived and reference
values, tags, and one frame's transcript authentication between two real pools (SQLite files)."""
import os

import pytest

from qkdd.auth import secret as auth_secret
from qkdd.auth.pool import AuthPool, PoolDry
from qkdd.auth.wegman_carter import (ALICE, BOB, CHUNKS_PER_FRAME, AuthFailed, AuthStateError, FrameAuthenticator,
                                     check_tag, frame_epsilon, hash_epsilon, make_tag, universal_hash)

KEK = bytes(range(32))


def gf64_mul_reference(a: int, b: int) -> int:
    """Schoolbook multiplication in GF(2)[x] / (x^64 + x^4 + x^3 + x + 1), independent of the native code."""
    product = 0
    for i in range(64):
        if b >> i & 1:
            product ^= a << i
    for i in range(127, 63, -1):
        if product >> i & 1:
            product ^= (1 << i) | (0b11011 << (i - 64))
    return product


def poly_reference(message: bytes, key: int) -> int:
    padded = message + bytes(-len(message) % 8)
    acc = 0
    for i in range(0, len(padded), 8):
        acc = gf64_mul_reference(acc ^ int.from_bytes(padded[i:i + 8], "little"), key)
    return gf64_mul_reference(acc ^ (8 * len(message)), key)


def hash_key(k1: int, k2: int) -> bytes:
    return k1.to_bytes(8, "little") + k2.to_bytes(8, "little")


def test_known_answers_derived_by_hand():
    one_block = (1).to_bytes(8, "little")
    # key 1: h = m1 + |m| = 1 xor 64;  key x: h = m1 x^2 + 64 x = 4 xor 128
    assert universal_hash(one_block, hash_key(1, 2)) == (65).to_bytes(8, "little") + (132).to_bytes(8, "little")
    # key x^63: x^126 + x^6 x^63, reduced by x^64 = x^4 + x^3 + x + 1 (worked in the test's docstring above)
    tag = universal_hash(one_block, hash_key(1 << 63, 1 << 63))
    assert tag[:8] == tag[8:] == (0xC00000000000033A).to_bytes(8, "little")
    # the empty message hashes its length (0) only: zero under every key
    assert universal_hash(b"", hash_key(0x1234, 0x5678)) == bytes(16)


@pytest.mark.parametrize("length", [1, 7, 8, 9, 63, 64, 200, 1001])
def test_matches_the_reference_polynomial(length):
    message = os.urandom(length)
    k1, k2 = int.from_bytes(os.urandom(8), "little"), int.from_bytes(os.urandom(8), "little")
    expected = poly_reference(message, k1).to_bytes(8, "little") + poly_reference(message, k2).to_bytes(8, "little")
    assert universal_hash(message, hash_key(k1, k2)) == expected


def test_length_block_separates_zero_padded_messages():
    key = os.urandom(16)
    assert universal_hash(b"\x00" * 3, key) != universal_hash(b"\x00" * 4, key)


def test_epsilon_bounds():
    # one 64-bit block plus the length block: (2 / 2^64)^2 = 2^-126
    assert hash_epsilon(8) == pytest.approx(2.0 ** -126)
    # 2^24 bytes = 2^21 blocks: ((2^21 + 1) / 2^64)^2 ~ 2^-86, and a frame's two tags double it
    assert hash_epsilon(1 << 24) == pytest.approx(((2 ** 21 + 1) / 2 ** 64) ** 2)
    assert frame_epsilon(1 << 24) == pytest.approx(2 * hash_epsilon(1 << 24))


def test_tags_are_padded_and_checked():
    key, pad = os.urandom(16), os.urandom(16)
    tag = make_tag(b"message", key, pad)
    assert bytes(a ^ b for a, b in zip(tag, pad)) == universal_hash(b"message", key)
    assert check_tag(b"message", key, pad, tag)
    assert not check_tag(b"messagf", key, pad, tag)
    assert not check_tag(b"message", key, os.urandom(16), tag)
    assert not check_tag(b"message", key, pad, tag[:15])


# -- one frame between two pools --------------------------------------------------------------------

@pytest.fixture
def pools(tmp_path):
    secret = auth_secret.generate("its-1", 128 * 12)
    made = {role: AuthPool(str(tmp_path / f"{role}.sqlite3"), KEK, "its-1") for role in (ALICE, BOB)}
    for pool in made.values():
        assert pool.seed(secret)
    yield made
    for pool in made.values():
        pool.close()


def run_frame(pools, frame_id, tamper_index=None):
    """A toy transcript of five records, then TAG_A (Alice) and TAG_B (Bob); `tamper_index` flips a bit
    in that record on its way to the receiver. Returns (Bob's result, Alice's result)."""
    a, b = FrameAuthenticator(ALICE, frame_id, pools[ALICE]), FrameAuthenticator(BOB, frame_id, pools[BOB])
    for index in range(5):
        sender = BOB if index % 2 == 0 else ALICE
        record = os.urandom(40 + index)
        seen = bytearray(record)
        if index == tamper_index:
            seen[3] ^= 0x10
        (a if sender == ALICE else b).record(sender, record)
        (b if sender == ALICE else a).record(sender, bytes(seen))
    keys_record = b"KEYS record"
    part = a.seal_keys(keys_record, refill_chunks=2)
    try:
        announced = b.check_keys(keys_record, part)
    except AuthFailed as exc:
        return exc, None
    assert announced == a.announced
    ack = b"ACK record"
    tag_b = b.seal_ack(ack)
    try:
        a.check_ack(ack, tag_b)
    except AuthFailed as exc:
        return None, exc
    b.check_commit(b"COMMIT record", a.seal_commit(b"COMMIT record"))
    return None, None


def test_both_ends_accept_an_untouched_transcript_and_spend_the_same_chunks(pools):
    assert run_frame(pools, 1) == (None, None)
    assert pools[ALICE].positions() == pools[BOB].positions() == list(range(CHUNKS_PER_FRAME, 12))
    assert pools[ALICE].consumed_bits == pools[BOB].consumed_bits == 128 * CHUNKS_PER_FRAME


@pytest.mark.parametrize("index", range(5))
def test_a_flipped_bit_in_any_record_fails_the_tag(pools, index):
    failure_at_bob, failure_at_alice = run_frame(pools, 2, tamper_index=index)
    assert isinstance(failure_at_bob, AuthFailed) and "altered" in str(failure_at_bob)


def test_a_flipped_bit_in_the_tags_or_announcement_fails(pools):
    a, b = FrameAuthenticator(ALICE, 3, pools[ALICE]), FrameAuthenticator(BOB, 3, pools[BOB])
    part = bytearray(a.seal_keys(b"keys", refill_chunks=1))
    part[8] ^= 1                                   # the refill position
    with pytest.raises(AuthFailed, match="altered"):
        b.check_keys(b"keys", bytes(part))
    a2, b2 = FrameAuthenticator(ALICE, 4, pools[ALICE]), FrameAuthenticator(BOB, 4, pools[BOB])
    b2.check_keys(b"keys", a2.seal_keys(b"keys", refill_chunks=0))
    tag_b = bytearray(b2.seal_ack(b"ack"))
    tag_b[-1] ^= 0x80
    with pytest.raises(AuthFailed, match="altered"):
        a2.check_ack(b"ack", bytes(tag_b))


def test_tag_c_covers_commit_and_the_transcript_before_it(pools):
    a, b = FrameAuthenticator(ALICE, 7, pools[ALICE]), FrameAuthenticator(BOB, 7, pools[BOB])
    b.check_keys(b"keys", a.seal_keys(b"keys", refill_chunks=0))
    a.check_ack(b"ack", b.seal_ack(b"ack"))
    tag_c = a.seal_commit(b"commit")
    assert len(tag_c) == 24 and tag_c[0] == 2
    with pytest.raises(AuthFailed, match="COMMIT"):
        b.check_commit(b"commiT", tag_c)           # another COMMIT under Alice's tag
    b2_a, b2 = FrameAuthenticator(ALICE, 8, pools[ALICE]), FrameAuthenticator(BOB, 8, pools[BOB])
    b2.check_keys(b"keys", b2_a.seal_keys(b"keys", refill_chunks=0))
    b2_a.check_ack(b"ack", b2.seal_ack(b"ack"))
    good = b2_a.seal_commit(b"commit")
    b2.check_commit(b"commit", good)
    assert b2.state == "DONE"
    with pytest.raises(AuthStateError):
        b2.check_commit(b"commit", good)           # one COMMIT per frame


def test_replayed_positions_are_refused_never_reused(pools):
    a = FrameAuthenticator(ALICE, 5, pools[ALICE])
    part = a.seal_keys(b"keys", refill_chunks=0)
    FrameAuthenticator(BOB, 5, pools[BOB]).check_keys(b"keys", part)
    with pytest.raises(AuthFailed, match="used before"):
        FrameAuthenticator(BOB, 5, pools[BOB]).check_keys(b"keys", part)


def test_calls_out_of_order_are_refused(pools):
    a = FrameAuthenticator(ALICE, 6, pools[ALICE])
    with pytest.raises(AuthStateError):
        a.check_ack(b"ack", bytes(24))
    with pytest.raises(AuthStateError):
        a.seal_ack(b"ack")


def test_a_dry_pool_takes_nothing(pools):
    for frame_id in range(3):                      # 12 chunks, 4 a frame
        assert run_frame(pools, 100 + frame_id) == (None, None)
    with pytest.raises(PoolDry):
        FrameAuthenticator(ALICE, 200, pools[ALICE]).seal_keys(b"keys", refill_chunks=0)
    assert pools[ALICE].chunks == 0 and pools[ALICE].consumed_bits == 12 * 128

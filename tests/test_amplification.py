"""Toeplitz privacy amplification: bit-exact with randextract, both ends through serialized messages,
and refusal of bad sizes and bad messages."""
import numpy as np
import pytest
from galois import GF2
from randextract import ToeplitzHashing

from qkdd.bindings import bits
from qkdd.bindings.toeplitz import (CPU_FEATURES, FFT_MIN_OUTPUT_BITS, PCLMUL, fft_available, seed_bits_for,
                                    toeplitz_hash)
from qkdd.postprocess import amplification as pa
from qkdd.postprocess import wire
from qkdd.postprocess.wire import PeerMessageError

SIZES = [(1, 1), (2, 1), (7, 3), (64, 64), (65, 2), (100, 99), (333, 17), (1000, 500), (4097, 1031),
         (20011, 10007), (65536, 32768), (100003, 1)]


@pytest.mark.parametrize("n,m", SIZES)
def test_bit_exact_with_randextract(n, m):
    rng = np.random.default_rng(n * 7 + m)
    x = rng.integers(0, 2, n, dtype=np.uint8)
    seed = rng.integers(0, 2, seed_bits_for(n, m), dtype=np.uint8)
    expected = np.asarray(ToeplitzHashing(n, m).extract(x, seed), dtype=np.uint8)
    # every code path the CPU offers: portable C, PCLMULQDQ, and all features (VPCLMULQDQ if present)
    for features in (0, PCLMUL, CPU_FEATURES):
        ours = bits.unpack(toeplitz_hash(bits.pack(seed), bits.pack(x), n, m, cpu_features=features), m)
        assert np.array_equal(ours, expected), (n, m, features)
    ours = bits.unpack(toeplitz_hash(bits.pack(seed), bits.pack(x), n, m, ntt=True), m)
    assert np.array_equal(ours, expected), (n, m, "ntt")
    if fft_available(n, m):
        for features in (PCLMUL, CPU_FEATURES):  # 128-bit PCLMULQDQ instance and AVX-512 one if present
            ours = bits.unpack(toeplitz_hash(bits.pack(seed), bits.pack(x), n, m, cpu_features=features, fft=True), m)
            assert np.array_equal(ours, expected), (n, m, features, "fft")


@pytest.mark.parametrize("n,m", [(1 << 20, 1 << 19), (1 << 20, 3), (1_000_003, 999_983)])
def test_ntt_path_matches_carry_less_path_on_large_blocks(n, m):
    # randextract takes minutes here; the carry-less path (checked against it above) is the oracle
    rng = np.random.default_rng(n + m)
    x, seed = bits.pack(rng.integers(0, 2, n)), bits.pack(rng.integers(0, 2, n + m - 1))
    assert np.array_equal(toeplitz_hash(seed, x, n, m, ntt=True), toeplitz_hash(seed, x, n, m))


needs_fft = pytest.mark.skipif(not CPU_FEATURES & PCLMUL, reason="the FFT kernel needs PCLMULQDQ (x86-64 CPUs)")


@needs_fft
@pytest.mark.parametrize("n,m", [(FFT_MIN_OUTPUT_BITS + 4099, FFT_MIN_OUTPUT_BITS), (3_000_017, 5)])
def test_fft_path_matches_carry_less_path_on_large_blocks(n, m):
    # randextract takes minutes here; the carry-less path (checked against it above) is the oracle. The
    # first size is where toeplitz_hash switches to the FFT kernel by itself (the transform has 2^18
    # points, so the split into a row transform and 2^16-point transforms is exercised).
    rng = np.random.default_rng(n - m)
    x, seed = bits.pack(rng.integers(0, 2, n)), bits.pack(rng.integers(0, 2, n + m - 1))
    carry_less = toeplitz_hash(seed, x, n, m, fft=False)
    assert np.array_equal(toeplitz_hash(seed, x, n, m, fft=True), carry_less)
    assert np.array_equal(toeplitz_hash(seed, x, n, m), carry_less)


def test_fft_path_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="FFT path"):
        toeplitz_hash(np.zeros(4, np.uint64), np.zeros(2, np.uint64), 128, 64, cpu_features=0, fft=True)
    assert not fft_available(1 << 31, 1 << 30)  # past the largest transform: the carry-less path takes it


def test_matches_randextract_matrix_definition():
    # The convention in writing: T[i][j] = seed[(i - j) mod (n + m - 1)], randextract's to_matrix().
    n, m = 40, 13
    rng = np.random.default_rng(3)
    x = rng.integers(0, 2, n, dtype=np.uint8)
    seed = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
    matrix = np.array([[seed[(i - j) % (n + m - 1)] for j in range(n)] for i in range(m)], dtype=np.uint8)
    assert np.array_equal(np.asarray(ToeplitzHashing(n, m).to_matrix(GF2(seed))), matrix)
    assert np.array_equal(bits.unpack(toeplitz_hash(bits.pack(seed), bits.pack(x), n, m), m), matrix @ x % 2)


def test_garbage_past_the_input_length_is_ignored():
    n, m = 130, 60
    rng = np.random.default_rng(4)
    x, seed = bits.pack(rng.integers(0, 2, n)), bits.pack(rng.integers(0, 2, n + m - 1))
    clean = toeplitz_hash(seed, x, n, m)
    x[-1] |= np.uint64(0xFFFF) << np.uint64(60)
    seed[-1] |= np.uint64(1) << np.uint64(63)
    assert np.array_equal(toeplitz_hash(seed, x, n, m), clean)


def _run_pair(key_a, key_b, n, m, mode=pa.SEED_INLINE, frame_id=9):
    alice = pa.Amplification(pa.ANNOUNCER, frame_id, key_a, n)
    bob = pa.Amplification(pa.RECEIVER, frame_id, key_b, n)
    [announce] = alice.start(m, seed_mode=mode)
    [ack] = bob.receive(announce)
    assert alice.receive(ack) == []
    return alice, bob, announce


@pytest.mark.parametrize("mode", [pa.SEED_INLINE, pa.SEED_SHAKE256])
def test_both_ends_compute_the_same_output_from_the_announced_seed(mode):
    n, m = 5003, 2001
    key = bits.pack(np.random.default_rng(5).integers(0, 2, n))
    alice, bob, announce = _run_pair(key, key.copy(), n, m, mode)
    assert alice.state == bob.state == pa.DONE
    assert alice.output_bits == bob.output_bits == m
    assert np.array_equal(alice.output, bob.output)
    # the output is the Toeplitz hash under the announced seed (inline mode carries it in the clear)
    if mode == pa.SEED_INLINE:
        header, payload = wire.decode(announce, max_payload_bytes=1 << 20)
        seed = np.frombuffer(payload[24:], dtype="<u8").astype(np.uint64)
        assert np.array_equal(alice.output, toeplitz_hash(seed, key, n, m))


def test_each_frame_gets_a_fresh_seed():
    n = 1000
    key = bits.pack(np.random.default_rng(6).integers(0, 2, n))
    first = _run_pair(key, key, n, 500)[0].output
    second = _run_pair(key, key, n, 500)[0].output
    assert not np.array_equal(first, second)


def test_bad_sizes_and_buffers_raise():
    key = np.zeros(2, np.uint64)
    with pytest.raises(ValueError):
        toeplitz_hash(np.zeros(4, np.uint64), key, 100, 101)   # m > n
    with pytest.raises(ValueError):
        toeplitz_hash(np.zeros(4, np.uint64), key, 100, 0)
    with pytest.raises(ValueError):
        toeplitz_hash(np.zeros(2, np.uint64), key, 100, 50)    # seed too short
    with pytest.raises(ValueError):
        toeplitz_hash(np.zeros(4, np.uint64), key[:1], 100, 50)  # input too short
    with pytest.raises(TypeError):
        toeplitz_hash(np.zeros(4, np.int64), key, 100, 50)
    with pytest.raises(ValueError):
        pa.Amplification(pa.RECEIVER, 1, key, 200)             # key shorter than its length
    alice = pa.Amplification(pa.ANNOUNCER, 1, key, 100)
    with pytest.raises(ValueError):
        alice.start(101)
    with pytest.raises(pa.AmplificationStateError):
        alice.output


def test_bad_messages_raise_clear_errors():
    n, m = 300, 100
    key = bits.pack(np.random.default_rng(7).integers(0, 2, n))
    alice = pa.Amplification(pa.ANNOUNCER, 4, key, n)
    [announce] = alice.start(m)

    def fresh():
        return pa.Amplification(pa.RECEIVER, 4, key.copy(), n)

    with pytest.raises(PeerMessageError, match="truncated"):
        fresh().receive(announce[:-1])
    with pytest.raises(PeerMessageError, match="past its declared payload"):
        fresh().receive(announce + b"\0")
    with pytest.raises(PeerMessageError, match="frame 5"):
        fresh().receive(wire.encode(pa.ANNOUNCE, 5, 0, bytes(announce[24:])))
    with pytest.raises(PeerMessageError, match="out-of-order"):
        fresh().receive(wire.encode(pa.ANNOUNCE, 4, 1, bytes(announce[24:])))
    with pytest.raises(PeerMessageError, match="unexpected ACK"):
        fresh().receive(wire.encode(pa.ACK, 4, 0, bytes(16)))
    with pytest.raises(PeerMessageError, match="oversized"):
        fresh().receive(wire.encode(pa.ANNOUNCE, 4, 0, bytes(10_000)))
    with pytest.raises(PeerMessageError, match="bits"):
        payload = bytearray(announce[24:])
        payload[0:8] = (n + 1).to_bytes(8, "little")
        fresh().receive(wire.encode(pa.ANNOUNCE, 4, 0, bytes(payload)))
    with pytest.raises(PeerMessageError, match="output length"):
        payload = bytearray(announce[24:])
        payload[8:16] = (n + 1).to_bytes(8, "little")
        fresh().receive(wire.encode(pa.ANNOUNCE, 4, 0, bytes(payload)))
    with pytest.raises(PeerMessageError, match="seed mode"):
        payload = bytearray(announce[24:])
        payload[16] = 7
        fresh().receive(wire.encode(pa.ANNOUNCE, 4, 0, bytes(payload)))
    with pytest.raises(PeerMessageError, match="past its length"):
        payload = bytearray(announce[24:])
        payload[-1] |= 0x80
        fresh().receive(wire.encode(pa.ANNOUNCE, 4, 0, bytes(payload)))
    with pytest.raises(PeerMessageError, match="magic"):
        fresh().receive(b"XXXX" + announce[4:])
    bob = fresh()
    [ack] = bob.receive(announce)
    with pytest.raises(PeerMessageError, match="duplicate"):
        bob.receive(announce)
    alice.receive(ack)
    with pytest.raises(PeerMessageError, match="duplicate"):
        alice.receive(ack)
    assert np.array_equal(alice.output, bob.output)

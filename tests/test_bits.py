"""Bit-array bindings against numpy references, and their refusal of bad buffers."""
import numpy as np
import pytest

from qkdd.bindings import NativeRangeError, bits


@pytest.mark.parametrize("nbits", [0, 1, 63, 64, 65, 1000, 4097])
def test_pack_matches_numpy_little_endian(nbits):
    rng = np.random.default_rng(nbits)
    values = rng.integers(0, 2, nbits, dtype=np.uint8)
    words = bits.pack(values)
    expected = np.packbits(np.concatenate([values, np.zeros((-nbits) % 64, np.uint8)]), bitorder="little")
    assert words.tobytes() == expected.tobytes()
    assert np.array_equal(bits.unpack(words, nbits), values)


def test_popcount_parity_ranges():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 2, 5000, dtype=np.uint8)
    words = bits.pack(values)
    for start, stop in [(0, 5000), (1, 2), (63, 129), (100, 100), (4990, 5000)]:
        ones = int(values[start:stop].sum())
        assert bits.popcount(words, start, stop) == ones
        assert bits.parity(words, start, stop) == ones % 2


def test_xor_and_gather():
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 2, (2, 300), dtype=np.uint8)
    wa, wb = bits.pack(a), bits.pack(b)
    bits.xor_into(wa, wb)
    assert np.array_equal(bits.unpack(wa, 300), a ^ b)
    index = np.array([299, 0, 150, 150], dtype=np.uint64)
    assert np.array_equal(bits.unpack(bits.gather(wa, 300, index), 4), (a ^ b)[index.astype(int)])


def test_bad_buffers_raise_clear_errors():
    words = bits.pack(np.ones(10, np.uint8))
    with pytest.raises(NativeRangeError):
        bits.popcount(words, 0, 65)
    with pytest.raises(NativeRangeError):
        bits.gather(words, 10, np.array([10], np.uint64))
    with pytest.raises(TypeError):
        bits.popcount(np.zeros(2, np.int64))
    with pytest.raises(ValueError):
        bits.xor_into(np.zeros(2, np.uint64), np.zeros(3, np.uint64))
    with pytest.raises(ValueError):
        bits.unpack(words, -1)
    with pytest.raises(ValueError):
        bits.gather(words, -1, np.array([0], np.uint64))


def test_unpack_beyond_the_words_is_refused_before_allocating():
    words = bits.pack(np.ones(10, np.uint8))
    with pytest.raises(NativeRangeError):
        bits.unpack(words, 1 << 50)           # would be a petabyte if allocated first
    assert bits.unpack(words, 64).sum() == 10

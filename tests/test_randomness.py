"""Fresh randomness and the SHAKE256 seed expander: lengths, determinism, label separation."""
import hashlib

import numpy as np
import pytest

from qkdd.postprocess import randomness


def test_fresh_words_are_fresh_and_sized():
    a, b = randomness.fresh_words(64), randomness.fresh_words(64)
    assert a.dtype == np.uint64 and a.size == 64
    assert not np.array_equal(a, b)
    assert len(randomness.fresh_seed()) == randomness.SEED_BYTES
    with pytest.raises(ValueError):
        randomness.fresh_words(-1)


def test_expansion_is_shake256_of_label_and_seed():
    seed = bytes(range(32))
    words = randomness.expand_words(seed, 5, b"qkdd/test")
    expected = np.frombuffer(hashlib.shake_256(b"qkdd/test\x00" + seed).digest(40), "<u8")
    assert np.array_equal(words, expected)
    assert np.array_equal(randomness.expand_words(seed, 5, b"qkdd/test"), words)  # both ends agree
    assert not np.array_equal(randomness.expand_words(seed, 5, b"qkdd/other"), words)
    assert np.array_equal(randomness.expand_words(seed, 3, b"qkdd/test"), words[:3])  # a prefix
    with pytest.raises(ValueError):
        randomness.expand_words(seed[:31], 5, b"qkdd/test")

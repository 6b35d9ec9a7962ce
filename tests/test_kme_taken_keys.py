"""The master KME's pool of taken stored keys: order, all-or-nothing takes, expiry."""
from qkdd.kme.taken_keys import TakenKeys


def entries(count, expires_at=100.0, size=32):
    return [(f"k{index}", bytes([index]) * size, expires_at) for index in range(count)]


def test_takes_the_oldest_keys_until_enough_bits_and_removes_them():
    pool = TakenKeys()
    pool.add(entries(3))
    assert pool.bits(0.0) == 3 * 256
    taken = pool.take(300, 0.0)              # more than one key: the two oldest
    assert list(taken) == ["k0", "k1"] and taken["k1"] == bytes([1]) * 32
    assert pool.bits(0.0) == 256
    assert list(pool.take(256, 0.0)) == ["k2"]
    assert pool.bits(0.0) == 0


def test_too_few_bits_takes_nothing():
    pool = TakenKeys()
    pool.add(entries(2))
    assert pool.take(3 * 256, 0.0) is None
    assert pool.bits(0.0) == 2 * 256


def test_expired_keys_are_dropped_never_handed_out():
    pool = TakenKeys()
    pool.add(entries(2, expires_at=10.0))
    pool.add([("late", b"\xff" * 32, 50.0)])
    assert pool.bits(9.9) == 3 * 256
    assert pool.take(256, 10.0) == {"late": b"\xff" * 32}
    assert pool.bits(10.0) == 0 and pool.take(8, 10.0) is None


def test_its_repr_shows_no_material():
    pool = TakenKeys()
    secret = bytes(range(32))
    pool.add([("k0", secret, 100.0)])
    text = repr(pool)
    assert text == "TakenKeys(entries=1, bits=256)"
    assert secret.hex() not in text and repr(secret) not in text

"""Known-answer self-tests run before the daemon reports READY=1: Toeplitz hashing, the Wegman-Carter hash
family, AES-256-GCM, ML-DSA-65 and ML-KEM-768. A failure is one SelfTestError naming the primitive; the
daemon then refuses to start (one log line), as FIPS 140-3 modules do with their power-on self-tests.

Vectors:
- Toeplitz: n = 4, m = 2, seed bits 0,1,1,0,1 and input bits 1,0,1,1: T[i][j] = seed[(i - j) mod 5] gives
  y = (1, 0) by hand; and a 1000 x 300 matrix checked against that definition row by row (numpy).
- Polynomial hash: hand-derived in GF(2^64) / (x^64 + x^4 + x^3 + x + 1) (tests/test_its_auth.py).
- AES-GCM: McGrew & Viega, "The Galois/Counter Mode of Operation" (2005), Appendix B, test cases 2 and 14
  (the 128- and 256-bit keys of zeros, 96-bit IV of zeros, one block of zeros).
- ML-DSA-65 and ML-KEM-768 (FIPS 204, FIPS 203): key generation from a fixed seed against the SHA-256 of
  the public key it gave when this test was written (a regression value: no published vector for these
  seeds ships offline), then a pairwise consistency test (sign/verify, encapsulate/decapsulate).
"""
from __future__ import annotations

import hashlib

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class SelfTestError(RuntimeError):
    """A known-answer test failed: the named primitive must not be trusted."""


GCM_VECTORS = [   # (key, ciphertext || tag) for IV 0^96, plaintext 0^128, no associated data
    (bytes(16), "0388dace60b6a392f328c2b971b2fe78ab6e47d42cec13bdf53a67b21257bddf"),
    (bytes(32), "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"),
]
MLDSA65_SEED_LABEL = b"qkdd self-test ml-dsa-65"
MLDSA65_PUBLIC_SHA256 = "b37d192430057691e95197f78d84388da741a5d5367ecc9c97ecf0ee304e4f7d"
MLKEM768_SEED_LABEL = b"qkdd self-test ml-kem-768"
MLKEM768_PUBLIC_SHA256 = "27b9e2efe7c855200dd4e2ca05540bea19e3937435f5f8cd03331483d56cfe82"


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise SelfTestError(f"self-test failed: {what}")


def toeplitz() -> None:
    from qkdd.bindings.bits import pack, unpack
    from qkdd.bindings.toeplitz import toeplitz_hash
    out = toeplitz_hash(np.array([0b10110], dtype=np.uint64), np.array([0b1101], dtype=np.uint64), 4, 2)
    _check(int(out[0]) == 0b01, "Toeplitz hashing (4 x 2 by hand)")
    n, m = 1000, 300
    stream = np.frombuffer(hashlib.shake_256(b"qkdd self-test toeplitz").digest(n + m - 1 + n), dtype=np.uint8) & 1
    seed_bits, x_bits = stream[:n + m - 1].copy(), stream[n + m - 1:].copy()
    ours = unpack(toeplitz_hash(pack(seed_bits), pack(x_bits), n, m), m)
    j = np.arange(n)
    expected = np.array([int(np.bitwise_xor.reduce(seed_bits[(i - j) % (n + m - 1)] & x_bits)) for i in range(m)],
                        dtype=np.uint8)
    _check(np.array_equal(ours, expected), "Toeplitz hashing (1000 x 300 against the matrix definition)")


def polynomial_hash() -> None:
    from qkdd.auth.wegman_carter import universal_hash
    block = (1).to_bytes(8, "little")
    _check(universal_hash(block, (1).to_bytes(8, "little") + (2).to_bytes(8, "little"))
           == (65).to_bytes(8, "little") + (132).to_bytes(8, "little"), "GF(2^64) polynomial hash (keys 1, x)")
    key = (1 << 63).to_bytes(8, "little") * 2
    _check(universal_hash(block, key) == (0xC00000000000033A).to_bytes(8, "little") * 2,
           "GF(2^64) polynomial hash (key x^63, reduction)")


def aes_gcm() -> None:
    for key, expected in GCM_VECTORS:
        _check(AESGCM(key).encrypt(bytes(12), bytes(16), None).hex() == expected,
               f"AES-{8 * len(key)}-GCM (McGrew-Viega test case {2 if len(key) == 16 else 14})")


def ml_dsa() -> None:
    key = mldsa.MLDSA65PrivateKey.from_seed_bytes(hashlib.sha256(MLDSA65_SEED_LABEL).digest())
    public = key.public_key()
    _check(hashlib.sha256(public.public_bytes_raw()).hexdigest() == MLDSA65_PUBLIC_SHA256,
           "ML-DSA-65 key generation from a fixed seed")
    message = b"qkdd self-test message"
    signature = key.sign(message)
    public.verify(signature, message)
    try:
        public.verify(signature, message + b"!")
    except InvalidSignature:
        return
    raise SelfTestError("self-test failed: ML-DSA-65 verified a signature of another message")


def ml_kem() -> None:
    key = mlkem.MLKEM768PrivateKey.from_seed_bytes(hashlib.shake_256(MLKEM768_SEED_LABEL).digest(64))
    public = key.public_key()
    _check(hashlib.sha256(public.public_bytes_raw()).hexdigest() == MLKEM768_PUBLIC_SHA256,
           "ML-KEM-768 key generation from a fixed seed")
    shared, ciphertext = public.encapsulate()
    _check(key.decapsulate(ciphertext) == shared, "ML-KEM-768 encapsulate/decapsulate")


TESTS = {"Toeplitz": toeplitz, "polynomial hash": polynomial_hash, "AES-GCM": aes_gcm, "ML-DSA-65": ml_dsa,
         "ML-KEM-768": ml_kem}


def run_self_tests() -> list[str]:
    """Run every known-answer test; returns their names, or raises SelfTestError at the first failure."""
    for name, test in TESTS.items():
        try:
            test()
        except SelfTestError:
            raise
        except Exception as exc:           # a primitive that raises instead of answering fails too
            raise SelfTestError(f"self-test failed: {name}: {type(exc).__name__}: {exc}") from None
    return list(TESTS)

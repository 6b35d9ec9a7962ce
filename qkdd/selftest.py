"""Known-answer self-tests run before the daemon reports READY=1: Toeplitz hashing, the Wegman-Carter hash
family, AES-256-GCM, ML-DSA-65 and ML-KEM-768. A failure is one SelfTestError naming the primitive; the
daemon then refuses to start (one log line), as FIPS 140-3 modules do with their power-on self-tests.

Vectors:
- Toeplitz: n = 4, m = 2, seed bits 0,1,1,0,1 and input bits 1,0,1,1: T[i][j] = seed[(i - j) mod 5] gives
  y = (1, 0) by hand; and a 1000 x 300 matrix checked against that definition row by row (numpy).
- Polynomial hash: hand-derived in GF(2^64) / (x^64 + x^4 + x^3 + x + 1) (tests/test_its_auth.py).
- AES-GCM: McGrew & Viega, "The Galois/Counter Mode of Operation" (2005), Appendix B, test cases 2 and 14
  (the 128- and 256-bit keys of zeros, 96-bit IV of zeros, one block of zeros).
- ML-DSA-65 (FIPS 204) and ML-KEM-768 (FIPS 203): NIST's ACVP known answers (usnistgov/ACVP-Server,
  gen-val/json-files, the FIPS 204 / FIPS 203 final vectors at commit a9496ad1031556369a9d2c1f20371ff2f50783c0;
  file and test case id beside each vector below), key generation from the published seed. The public keys
  (1952 and 1184 bytes) are kept as SHA3-256 digests of the published values, and each check also compares a
  value the published private key carries verbatim: ML-DSA's tr = SHAKE256(pk, 64 bytes) (FIPS 204, Alg. 6
  line 6) and ML-KEM's H(ek) = SHA3-256(ek) (FIPS 203, Alg. 16 line 3). ML-KEM decapsulation is checked on its
  implicit-rejection path against FIPS 203, Alg. 18 lines 7-11: a ciphertext that is no encapsulation
  decapsulates to J(z || c) = SHAKE256(z || c, 32 bytes), z from the same ACVP case. Then pairwise consistency
  (sign/verify, encapsulate/decapsulate). Not covered by a published vector: ML-DSA signing (hedged in this
  library, no deterministic entry point) and ACVP's sigVer / decapsulation cases (their keys are given
  expanded, which this library cannot load; it takes seeds only).
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
# ACVP ML-DSA-keyGen-FIPS204, tgId 2 (ML-DSA-65), tcId 26: prompt.json "seed"; expectedResults.json "pk" as
# SHA3-256 of the published hex-decoded value, and bytes 64..127 of its "sk" (tr) verbatim.
MLDSA65_ACVP_SEED = "AC37688A229C819F1F5BA5A2ED98E3D0AD98D1B5DB233FF8E8122040BCBA609F"
MLDSA65_ACVP_PK_SHA3_256 = "abc3e0d05b6d4f390fecc69851a15dfa243a9177c36386a0672ff6a320ac8160"
MLDSA65_ACVP_TR = ("F1254575EF25AD8B827881B5E1451EDA2EBDFC64DEEB72F6895663E6585311B4"
                   "2F3566739CBBC6DB2FDE642A3652E581A0B92791809696AA658E9D49931AB2E6")
# ACVP ML-KEM-keyGen-FIPS203, tgId 2 (ML-KEM-768), tcId 26: prompt.json "d" and "z"; expectedResults.json
# "dk" carries H(ek) = SHA3-256 of its "ek" verbatim (dk bytes 2368..2399).
MLKEM768_ACVP_D = "706D0283EC389266E596018FEB19E8DACCC5E72E47E2ACC8E5240A81298E5DD1"
MLKEM768_ACVP_Z = "C15B8C9B80FA3920FC873937A3CD2CF4F5418327986AB8FC09827E25588FED1E"
MLKEM768_ACVP_EK_SHA3_256 = "2F90273A68B93E4DB09A7DD17CEC9E162D7E11D4DC5F6D351A5F912C87F2C2D7"
MLKEM768_CIPHERTEXT_BYTES = 1088


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
    key = mldsa.MLDSA65PrivateKey.from_seed_bytes(bytes.fromhex(MLDSA65_ACVP_SEED))
    public = key.public_key()
    raw = public.public_bytes_raw()
    _check(hashlib.sha3_256(raw).hexdigest() == MLDSA65_ACVP_PK_SHA3_256.lower()
           and hashlib.shake_256(raw).hexdigest(64) == MLDSA65_ACVP_TR.lower(),
           "ML-DSA-65 key generation (ACVP ML-DSA-keyGen-FIPS204 tcId 26)")
    message = b"qkdd self-test message"
    signature = key.sign(message)
    public.verify(signature, message)
    try:
        public.verify(signature, message + b"!")
    except InvalidSignature:
        return
    raise SelfTestError("self-test failed: ML-DSA-65 verified a signature of another message")


def ml_kem() -> None:
    z = bytes.fromhex(MLKEM768_ACVP_Z)
    key = mlkem.MLKEM768PrivateKey.from_seed_bytes(bytes.fromhex(MLKEM768_ACVP_D) + z)
    public = key.public_key()
    _check(hashlib.sha3_256(public.public_bytes_raw()).hexdigest() == MLKEM768_ACVP_EK_SHA3_256.lower(),
           "ML-KEM-768 key generation (ACVP ML-KEM-keyGen-FIPS203 tcId 26)")
    not_an_encapsulation = bytes(MLKEM768_CIPHERTEXT_BYTES)
    _check(key.decapsulate(not_an_encapsulation) == hashlib.shake_256(z + not_an_encapsulation).digest(32),
           "ML-KEM-768 decapsulation (implicit rejection, FIPS 203 Alg. 18)")
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

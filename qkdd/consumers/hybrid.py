"""Hybrid pre-shared keys (`hybrid = "mlkem768"`): the PSK a consumer installs is a KDF over the QKD key and
an ML-KEM-768 shared secret agreed over the classical channel, so a compromised trusted relay or a broken
QKD link still leaves post-quantum security, and a broken ML-KEM still leaves the QKD key's.

Construction (the concatenation combiner):
    Z' = K_qkd || K_kem                              NIST SP 800-56C Rev. 2 §2: a hybrid shared secret Z' = Z || T
    PSK = HKDF-SHA256(salt = SALT, IKM = Z', info = tag || epoch u64 || key_id 16 bytes, L = 32)
                                                     RFC 5869 §2 (extract, then expand), SP 800-56C §5 two-step KDF
The output stays pseudorandom as long as either input is secret (Bindel, Brendel, Fischlin, Goncalves,
Stebila, "Hybrid Key Encapsulation Mechanisms and Authenticated Key Exchange", PQCrypto 2019, §3; the
same combiner as draft-ietf-tls-hybrid-design §3.2). The info binds the PSK to the consumer and epoch.

The KEM (FIPS 203 ML-KEM-768, from `cryptography`): the follower announces a fresh encapsulation key
(KemAnnouncement); the leader encapsulates to the newest one and sends the ciphertext with its epoch
proposal (HybridEpochReservation), prefixed by the key's 8-byte id, so a follower that has moved on to a
newer key refuses instead of silently deriving another PSK (ML-KEM rejects implicitly). Each decapsulation
key is used once and dropped, and the shared secrets live in memory only: a past PSK cannot be rebuilt
from anything stored (after a restart a hybrid consumer takes a fresh epoch at once).
"""
from __future__ import annotations

import hashlib
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SALT = b"qkdd/hybrid-psk/v1"
PSK_BYTES = 32
KEM_KEY_ID_BYTES = 8
ENCAPSULATION_KEY_BYTES = 1184      # FIPS 203 Table 3, ML-KEM-768
CIPHERTEXT_BYTES = 1088
SHARED_SECRET_BYTES = 32
MAX_DECAPSULATION_KEYS = 4          # announced keys a follower keeps for proposals still on the way


class HybridError(ValueError):
    """A KEM message that cannot be used (unknown key, wrong size); never carries secrets."""


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF with SHA-256."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def derive_psk(qkd_key: bytes, kem_secret: bytes, *, tag: bytes, number: int, key_id: str) -> bytes:
    """The hybrid PSK of one epoch (module docstring)."""
    if len(kem_secret) != SHARED_SECRET_BYTES or not qkd_key:
        raise HybridError("a hybrid PSK needs a QKD key and a 32-byte ML-KEM shared secret")
    info = tag + struct.pack(">Q", number) + bytes.fromhex(key_id.replace("-", ""))
    return hkdf_sha256(qkd_key + kem_secret, salt=SALT, info=info, length=PSK_BYTES)


def kem_key_id(encapsulation_key: bytes) -> bytes:
    return hashlib.sha256(b"qkdd/mlkem768-key\x00" + encapsulation_key).digest()[:KEM_KEY_ID_BYTES]


def encapsulate(encapsulation_key: bytes) -> tuple[bytes, bytes]:
    """Leader: (shared secret, ciphertext field = key id || ML-KEM ciphertext) for the follower's key."""
    if len(encapsulation_key) != ENCAPSULATION_KEY_BYTES:
        raise HybridError(f"an ML-KEM-768 encapsulation key is {ENCAPSULATION_KEY_BYTES} bytes")
    try:
        public = mlkem.MLKEM768PublicKey.from_public_bytes(encapsulation_key)
    except ValueError:
        raise HybridError("not an ML-KEM-768 encapsulation key") from None
    secret, ciphertext = public.encapsulate()
    return secret, kem_key_id(encapsulation_key) + ciphertext


class KemReceiver:
    """Follower: the decapsulation keys of the encapsulation keys it announced, each used once."""

    def __init__(self) -> None:
        self._keys: dict[bytes, mlkem.MLKEM768PrivateKey] = {}

    def fresh(self) -> bytes:
        """A new key pair; its encapsulation key, to announce."""
        private = mlkem.MLKEM768PrivateKey.generate()
        public = private.public_key().public_bytes_raw()
        self._keys[kem_key_id(public)] = private
        while len(self._keys) > MAX_DECAPSULATION_KEYS:
            del self._keys[next(iter(self._keys))]
        return public

    def decapsulate(self, field: bytes) -> bytes:
        """The shared secret of a leader's ciphertext field; the key it used is dropped."""
        key_id, ciphertext = field[:KEM_KEY_ID_BYTES], field[KEM_KEY_ID_BYTES:]
        if len(ciphertext) != CIPHERTEXT_BYTES:
            raise HybridError(f"an ML-KEM-768 ciphertext is {CIPHERTEXT_BYTES} bytes, got {len(ciphertext)}")
        private = self._keys.pop(key_id, None)
        if private is None:
            raise HybridError("the ciphertext is for an ML-KEM key this end no longer holds")
        return private.decapsulate(ciphertext)

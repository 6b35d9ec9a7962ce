"""The pre-shared authentication secret: one file, written once by `qkdctl auth secret` and installed at both
ends of a link, that seeds the link's authentication pool (pool.py) before QKD output replenishes it.

Layout (text, one field a line): the line FORMAT, `link_id <id>`, `secret_id <32 hex digits>` (names this
secret so a pool never takes a second one by mistake), `bits <n>`, then the secret in base64 on one line.
The file must be a regular file that neither group nor others can read (like the KEK).
"""
from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass, field

from qkdd.auth.wegman_carter import CHUNK_BYTES
from qkdd.keyfile import KeyFileError, read_key_file

FORMAT = "qkdd-auth-secret v1"
MIN_BITS = 128 * 3               # one frame's hash key and pads; QKD output replenishes the pool from there
MAX_BITS = 1 << 24
DEFAULT_BITS = 1 << 16
_MAX_FILE_BYTES = 256 + (MAX_BITS // 8) * 4 // 3 + 8


class AuthSecretError(ValueError):
    """The authentication secret file cannot be read or is malformed (the message names the file)."""


@dataclass(frozen=True)
class AuthSecret:
    link_id: str
    secret_id: str
    material: bytes = field(repr=False)

    @property
    def bits(self) -> int:
        return 8 * len(self.material)

    def chunks(self) -> list[bytes]:
        return [self.material[i:i + CHUNK_BYTES] for i in range(0, len(self.material), CHUNK_BYTES)]


def generate(link_id: str, bits: int = DEFAULT_BITS) -> AuthSecret:
    """A fresh secret of `bits` bits (a multiple of 128) from the OS CSPRNG."""
    if bits % (8 * CHUNK_BYTES) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be a multiple of {8 * CHUNK_BYTES} in [{MIN_BITS}, {MAX_BITS}], got {bits}")
    return AuthSecret(link_id, os.urandom(16).hex(), os.urandom(bits // 8))


def encode(secret: AuthSecret) -> bytes:
    return (f"{FORMAT}\nlink_id {secret.link_id}\nsecret_id {secret.secret_id}\nbits {secret.bits}\n"
            f"{base64.b64encode(secret.material).decode()}\n").encode()


def write(secret: AuthSecret, path: str, *, overwrite: bool = False) -> None:
    """Write the file 0600 (refusing an existing file unless `overwrite`)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, encode(secret))
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: str) -> AuthSecret:
    try:
        raw, mode = read_key_file(path, _MAX_FILE_BYTES)
    except OSError as exc:
        raise AuthSecretError(f"authentication secret {path}: {exc.strerror}") from None
    except KeyFileError as exc:
        raise AuthSecretError(f"authentication secret {path} {exc}") from None
    if mode & 0o077:
        raise AuthSecretError(f"authentication secret {path}: mode {stat.S_IMODE(mode):04o} lets group or "
                              "others read it; chmod 0600")
    lines = raw.decode("ascii", "replace").splitlines()
    try:
        fields = dict(line.split(" ", 1) for line in lines[1:4])
        if lines[0] != FORMAT or len(lines) != 5 or set(fields) != {"link_id", "secret_id", "bits"}:
            raise ValueError
        material = base64.b64decode(lines[4], validate=True)
        bits = int(fields["bits"])
        bytes.fromhex(fields["secret_id"])
    except (ValueError, IndexError, binascii.Error):
        raise AuthSecretError(f"authentication secret {path}: not a {FORMAT!r} file (write one with "
                              "`qkdctl auth secret`)") from None
    if bits != 8 * len(material) or len(material) % CHUNK_BYTES or 8 * len(material) < MIN_BITS:
        raise AuthSecretError(f"authentication secret {path}: {8 * len(material)} bits, the header says {bits} "
                              f"(at least {MIN_BITS}, a multiple of {8 * CHUNK_BYTES})")
    return AuthSecret(fields["link_id"], fields["secret_id"], material)

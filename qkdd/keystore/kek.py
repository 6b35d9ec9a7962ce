"""The key-encryption key (KEK): 32 bytes from a private file or a systemd credential.

The file holds the key raw (32 bytes) or as 64 hex digits. It must be a regular file that neither group
nor others can read: a KEK that other users could read protects nothing, so it is refused.
"""
from __future__ import annotations

import os
import stat

from qkdd.keyfile import KeyFileError, read_key_file
from qkdd.keystore.model import KeyStoreError

KEK_BYTES = 32
MAX_KEK_FILE_BYTES = 256         # raw or hex KEK with a newline; anything longer is not a KEK file


def load_kek(path: str) -> bytes:
    """Read the KEK from `path`, refusing files readable by group or others."""
    try:
        raw, mode = read_key_file(path, MAX_KEK_FILE_BYTES, follow_symlinks=False)
    except OSError as exc:
        raise KeyStoreError(f"key-encryption key {path}: {exc.strerror}") from None
    except KeyFileError as exc:
        raise KeyStoreError(f"key-encryption key {path} {exc}") from None
    if mode & 0o077:
        raise KeyStoreError(f"key-encryption key {path}: mode {stat.S_IMODE(mode):04o} lets group or "
                            "others read it; chmod 0600")
    return _decode(raw, path)


def kek_from_credentials(name: str = "kek") -> bytes | None:
    """The KEK passed by systemd as credential `name`, or None outside systemd.

    The unit loads the directory /etc/qkdd/credentials as credential `qkdd` (LoadCredential=qkdd:DIR),
    which systemd presents file by file as `qkdd_<file>`; a credential loaded on its own keeps `name`.
    """
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    for candidate in (name, f"qkdd_{name}"):
        path = os.path.join(directory, candidate)
        if os.path.exists(path):
            return load_kek(path)
    return None


def create_kek(path: str) -> bytes:
    """Create a fresh KEK file (0600, never overwriting) and return the key."""
    key = os.urandom(KEK_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise KeyStoreError(f"key-encryption key {path}: already exists, not overwriting") from None
    except OSError as exc:
        raise KeyStoreError(f"key-encryption key {path}: {exc.strerror}") from None
    try:
        os.write(fd, key.hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def _decode(raw: bytes, path: str) -> bytes:
    if len(raw) == KEK_BYTES:
        return raw
    text = raw.strip()
    if len(text) == 2 * KEK_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise KeyStoreError(f"key-encryption key {path}: expected {KEK_BYTES} raw bytes or {2 * KEK_BYTES} hex digits")

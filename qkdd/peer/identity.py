"""Peer identities: ML-DSA-65 key pairs (FIPS 204) that sign the classical-channel handshake.

The private key lives in a PEM (PKCS#8) file readable by its owner only (0600); the other end pins the
public key, either as a PEM file or as the base64 of the raw 1952-byte key (a one-line config value).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mldsa

from qkdd.keyfile import KeyFileError, read_key_file

MLDSA65_PUBLIC_KEY_BYTES = 1952
MAX_KEY_FILE_BYTES = 64 * 1024      # PEM of an ML-DSA-65 key is a few kilobytes


class IdentityError(ValueError):
    """A peer key file or pinned key is missing, malformed, of the wrong type or unsafely stored."""


def generate_identity() -> mldsa.MLDSA65PrivateKey:
    return mldsa.MLDSA65PrivateKey.generate()


def key_fingerprint(public_key: mldsa.MLDSA65PublicKey) -> bytes:
    """SHA-256 of the raw public key (32 bytes): how the handshake and logs name a key."""
    return hashlib.sha256(public_key.public_bytes_raw()).digest()


def format_fingerprint(fingerprint: bytes) -> str:
    """Short printable form of a fingerprint for log lines and CLI output."""
    return "sha256:" + fingerprint.hex()[:16]


def public_key_base64(public_key: mldsa.MLDSA65PublicKey) -> str:
    return base64.b64encode(public_key.public_bytes_raw()).decode("ascii")


def public_key_pem(public_key: mldsa.MLDSA65PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def save_private_key(private_key: mldsa.MLDSA65PrivateKey, path: str | os.PathLike, *,
                     overwrite: bool = False) -> None:
    """Write the key as PEM PKCS#8, created 0600 (never world-readable, not even for a moment)."""
    pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    _write_file(Path(path), pem, 0o600, overwrite)


def save_public_key(public_key: mldsa.MLDSA65PublicKey, path: str | os.PathLike, *,
                    overwrite: bool = False) -> None:
    _write_file(Path(path), public_key_pem(public_key), 0o644, overwrite)


def load_private_key(path: str | os.PathLike) -> mldsa.MLDSA65PrivateKey:
    """Load a PEM PKCS#8 ML-DSA-65 private key; refuses files that group or others can access."""
    path = Path(path)
    data, mode = _read_key_file(path, "peer private key")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"peer private key {path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise IdentityError(f"peer private key {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, mldsa.MLDSA65PrivateKey):
        raise IdentityError(f"peer private key {path} is a {type(key).__name__}, not ML-DSA-65")
    return key


def load_public_key(value: str | os.PathLike | bytes) -> mldsa.MLDSA65PublicKey:
    """A pinned peer key from config: PEM text, a path to a PEM (or base64) file, or base64 of the raw key."""
    if isinstance(value, bytes):
        text = value.decode("ascii", errors="replace")
        source = "pinned key"
    elif isinstance(value, os.PathLike) or (isinstance(value, str) and _looks_like_path(value)):
        path = Path(value)
        text = _read_key_file(path, "pinned peer key")[0].decode("ascii", errors="replace")
        source = f"pinned peer key file {path}"
    else:
        text = value
        source = "pinned peer key"
    text = text.strip()
    if "-----BEGIN" in text:
        try:
            key = serialization.load_pem_public_key(text.encode("ascii"))
        except ValueError:
            raise IdentityError(f"{source} is not a valid PEM public key") from None
        if not isinstance(key, mldsa.MLDSA65PublicKey):
            raise IdentityError(f"{source} is a {type(key).__name__}, not ML-DSA-65")
        return key
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise IdentityError(f"{source} is neither PEM nor base64") from None
    if len(raw) != MLDSA65_PUBLIC_KEY_BYTES:
        raise IdentityError(
            f"{source} decodes to {len(raw)} bytes; an ML-DSA-65 public key has {MLDSA65_PUBLIC_KEY_BYTES}")
    try:
        return mldsa.MLDSA65PublicKey.from_public_bytes(raw)
    except ValueError:
        raise IdentityError(f"{source} is not a valid ML-DSA-65 public key") from None


def _read_key_file(path: Path, what: str) -> tuple[bytes, int]:
    """Contents and mode of a key file (a regular file of at most MAX_KEY_FILE_BYTES)."""
    try:
        return read_key_file(path, MAX_KEY_FILE_BYTES)
    except OSError as exc:
        raise IdentityError(f"cannot read {what} {path}: {exc.strerror}") from None
    except KeyFileError as exc:
        raise IdentityError(f"{what} {path} {exc}") from None


def _looks_like_path(value: str) -> bool:
    # PEM text has its armour; base64 of a raw ML-DSA-65 key is 2604 characters, longer than any path.
    return "-----BEGIN" not in value and len(value.strip()) < 1024


def _write_file(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if path.exists() and not overwrite:
        raise IdentityError(f"{path} exists; refusing to overwrite")
    try:
        fd = os.open(tmp, flags, mode)
        try:
            os.fchmod(fd, mode)  # umask may have narrowed it; never widened beyond `mode`
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise IdentityError(f"cannot write {path}: {exc.strerror}") from None

"""The key-encryption key (KEK): 32 bytes from a private file or a systemd credential.

The file holds the key raw (32 bytes) or as 64 hex digits. It must be a regular file that neither group
nor others can read: a KEK that other users could read protects nothing, so it is refused.
Where it comes from is `QKD_KEK_SOURCE`: "credential" (set by the packaged unit) takes only the systemd
credential "kek" and refuses a KEK beside the store; "any" (the default) falls back to <state_dir>/kek.
"""
from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping

from qkdd.keyfile import KeyFileError, read_key_file
from qkdd.keystore.model import KeyStoreError

KEK_BYTES = 32
MAX_KEK_FILE_BYTES = 256         # raw or hex KEK with a newline; anything longer is not a KEK file
KEK_FILE = "kek"                 # in the state directory, beside the key store (source "any" only)
KEK_SOURCE_VARIABLE = "QKD_KEK_SOURCE"
KEK_SOURCES = ("any", "credential")

log = logging.getLogger("qkdd.keystore")


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
    found = {candidate: load_kek(path) for candidate in (name, f"qkdd_{name}")
             if os.path.exists(path := os.path.join(directory, candidate))}
    if len(set(found.values())) > 1:
        # SetCredentialEncrypted=kek (sealed by the package) and /etc/qkdd/credentials/kek disagree:
        # taking either could open the store under the wrong key, so neither is taken.
        raise KeyStoreError(f"key-encryption key: credentials {' and '.join(found)} differ; remove one "
                            "(the sealed drop-in or /etc/qkdd/credentials/kek)")
    return next(iter(found.values()), None)


def kek_for_state_dir(state_dir: str, environ: Mapping[str, str] | None = None) -> bytes:
    """The KEK of the key store in `state_dir`: the systemd credential "kek"; else, unless
    QKD_KEK_SOURCE=credential, <state_dir>/kek (created 0600 on first start)."""
    environ = os.environ if environ is None else environ
    source = environ.get(KEK_SOURCE_VARIABLE, "") or "any"
    if source not in KEK_SOURCES:
        raise KeyStoreError(f"{KEK_SOURCE_VARIABLE}={source!r}: expected one of {', '.join(KEK_SOURCES)}")
    beside_store = os.path.join(state_dir, KEK_FILE)
    kek = kek_from_credentials()
    if kek is not None:
        if source == "credential" and os.path.lexists(beside_store):
            log.warning("ignoring %s beside the key store: the key-encryption key comes from the credential "
                        "\"kek\"; remove the file once the store opens", beside_store)
        return kek
    if source == "credential":
        hint = (f"; {beside_store} beside the store is not used: move it into the credential store "
                "(/usr/lib/qkdd/kek-setup does)") if os.path.lexists(beside_store) else ""
        raise KeyStoreError(f"key-encryption key: {KEK_SOURCE_VARIABLE}=credential and no systemd credential "
                            f"\"kek\" was passed (the package seals one at install, see /usr/lib/qkdd/kek-setup)"
                            f"{hint}; not creating one beside the key store (set {KEK_SOURCE_VARIABLE}=any "
                            "to allow that)")
    return load_kek(beside_store) if os.path.exists(beside_store) else create_kek(beside_store)


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

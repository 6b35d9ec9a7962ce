"""A router's pre-shared key on disk: hex digits in a file of its own (mode 0600); read at start-up and by
check-config, never logged."""
from __future__ import annotations

MIN_PSK_BYTES = 16
MAX_PSK_BYTES = 64


class PskError(ValueError):
    """A PSK file that cannot be used; names the file, never its content."""


def read_psk(path: str) -> bytes:
    """A PSK file: hex digits (whitespace ignored), MIN_PSK_BYTES..MAX_PSK_BYTES bytes."""
    try:
        with open(path, encoding="ascii") as handle:
            text = "".join(handle.read().split())
    except (OSError, UnicodeDecodeError) as exc:
        raise PskError(f"{path}: cannot read ({type(exc).__name__})") from None
    try:
        psk = bytes.fromhex(text)
    except ValueError:
        raise PskError(f"{path}: not hex digits") from None
    if not MIN_PSK_BYTES <= len(psk) <= MAX_PSK_BYTES:
        raise PskError(f"{path}: a PSK of {len(psk)} bytes, allowed {MIN_PSK_BYTES}..{MAX_PSK_BYTES}")
    return psk

"""What the ETSI GS QKD 014 KME refuses, and why: one error type per kind of refusal, each carrying the
Error data format of §6.5 (`message`, `details`). qkdd/api/etsi014.py alone turns them into HTTP answers."""
from __future__ import annotations

from typing import Any


class KmeError(Exception):
    """A request the KME does not serve. `message` and `details` are what the SAE reads (§6.5): each
    detail an object naming what it is about, never key material."""

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details or [])


class Unauthorized(KmeError):
    """The caller is not an SAE this KME serves, or asks for keys not meant for it."""

    def __init__(self, reason: str) -> None:
        super().__init__("unauthorized", [{"reason": reason}])


class BadRequest(KmeError):
    """The request is malformed, or names keys or SAEs this KME does not know; the SAE must change it."""


class KeysUnavailable(KmeError):
    """No keys for this request now (too few stored, the slave SAE's KME away or refusing); the same request
    may succeed after `retry_after_s`."""

    def __init__(self, reason: str, retry_after_s: int = 1) -> None:
        super().__init__("keys are not available", [{"reason": reason}])
        self.retry_after_s = retry_after_s

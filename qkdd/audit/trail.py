"""Append-only audit log of key lifecycle events: ids, sizes and holders, never key material.

Theory of operation
-------------------
One JSON object per line. Every record carries `seq` (0, 1, 2, ... with no gap), `prev` (the previous
record's hash; 64 zeros for the first) and `hash` = SHA-256(prev || the record's canonical JSON without
`hash`), so changing, dropping, inserting or reordering a record breaks the chain at that point. A
chain alone can be rewritten from the change onwards by whoever can write the file, so every
`sign_every_records` records (and when the log is closed) a HEAD record commits to the chain: its
`signature` is the node's ML-DSA-65 signature (FIPS 204) of HEAD_LABEL || the head hash || its seq, which
only the holder of the identity key can make. `qkdctl audit verify` (verify.py) recomputes the chain and
checks every signature against the node's pinned public key; records after the last signed HEAD are
reported as unsigned (a truncation there cannot be told from a log that ended).

Events: generated (a frame's keys committed: usable), reserved (for a holder: an SAE, consumer or /v1
request), released, delivered (handed out once, material erased), expired (material erased unused),
erased (pending or unconfirmed keys dropped), head (the signature record), opened (the daemon started
writing). Each names the link and its keys as [key_id, bits] pairs.

Writes are appended and flushed per record, and fsynced at every HEAD, under a lock (the key store calls
from worker threads). On opening an existing log, its last record is read to continue the chain (a
torn last line, from a crash mid-write, is cut off and reported in the `opened` record).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Callable

log = logging.getLogger("qkdd.audit")

GENESIS = "0" * 64
HEAD_LABEL = b"qkdd/audit-head\x00"
EVENTS = ("opened", "generated", "reserved", "released", "delivered", "expired", "erased", "head")
DEFAULT_SIGN_EVERY = 256


def canonical(record: dict, encoded: dict[str, str] | None = None) -> bytes:
    """The record as one line of canonical JSON. `encoded`: the values of the fields it names, already encoded by
    _json (a record's `keys` may list tens of thousands of keys: encoded once for its hash and its line)."""
    if not encoded:
        return _json(record).encode()
    return ("{" + ",".join(f"{_json(name)}:{encoded[name] if name in encoded else _json(record[name])}"
                           for name in sorted(record)) + "}").encode()


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def record_hash(record: dict, encoded: dict[str, str] | None = None) -> str:
    """The hash a record must carry: SHA-256(prev || canonical record without `hash`); `encoded` as canonical()."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(bytes.fromhex(record["prev"]) + canonical(body, encoded)).hexdigest()


def head_message(head_hash: str, seq: int) -> bytes:
    return HEAD_LABEL + bytes.fromhex(head_hash) + seq.to_bytes(8, "big")


class AuditTrail:
    """The log at `path`; `signer(message) -> signature` (the identity key's sign), or None for unsigned
    heads (no identity configured; verify says so)."""

    def __init__(self, path: str, *, signer: Callable[[bytes], bytes] | None = None,
                 sign_every_records: int = DEFAULT_SIGN_EVERY, clock: Callable[[], float] = time.time):
        if sign_every_records < 1:
            raise ValueError("sign_every_records must be at least 1")
        self.path = path
        self._signer = signer
        self._sign_every = sign_every_records
        self._clock = clock
        self._lock = threading.Lock()
        self._since_head = 0
        torn = self._recover()
        self._file = open(path, "ab", buffering=0)
        os.chmod(path, 0o600)
        self.event("opened", "", [], detail=f"cut a torn last line of {torn} bytes" if torn else "")

    def _recover(self) -> int:
        """Continue the chain from the file's last whole record; cut a torn tail. Returns the bytes cut."""
        self._seq, self._prev = 0, GENESIS
        if not os.path.exists(self.path):
            return 0
        with open(self.path, "rb+") as f:
            data = f.read()
            end = data.rfind(b"\n") + 1
            torn = len(data) - end
            if torn:
                f.truncate(end)
            last = data[:end].rstrip(b"\n").rsplit(b"\n", 1)[-1]
        if last:
            record = json.loads(last)
            self._seq, self._prev = record["seq"] + 1, record["hash"]
        return torn

    def event(self, event: str, link_id: str, keys: Iterable[tuple[str, int]], *, holder: str | None = None,
              detail: str = "") -> None:
        """Append one record: `keys` are (key_id, bits) pairs, never material."""
        if event not in EVENTS:
            raise ValueError(f"unknown audit event {event!r}")
        keys = keys if isinstance(keys, (list, tuple)) else list(keys)
        if not all(type(key_id) is str and type(bits) is int for key_id, bits in keys):
            keys = [[str(key_id), int(bits)] for key_id, bits in keys]     # as JSON encodes them: ["id",bits]
        body = {"event": event, "link_id": link_id, "keys": keys}
        if holder is not None:
            body["holder"] = holder
        if detail:
            body["detail"] = detail
        with self._lock:
            self._append(body)
            self._since_head += 1
            if self._since_head >= self._sign_every:
                self._sign_head()

    def sign_head(self) -> None:
        """A HEAD record now (the daemon calls it on stopping)."""
        with self._lock:
            if self._since_head:
                self._sign_head()

    def close(self) -> None:
        self.sign_head()
        with self._lock:
            self._file.close()

    @property
    def head(self) -> tuple[int, str]:
        """(seq of the last record, its hash)."""
        with self._lock:
            return self._seq - 1, self._prev

    def _sign_head(self) -> None:
        head_seq, head_hash = self._seq - 1, self._prev
        body = {"event": "head", "link_id": "", "keys": [], "head_seq": head_seq, "head": head_hash}
        if self._signer is not None:
            body["signature"] = self._signer(head_message(head_hash, head_seq)).hex()
        self._append(body)
        os.fsync(self._file.fileno())
        self._since_head = 0

    def _append(self, body: dict) -> None:
        record = {"seq": self._seq, "time": round(self._clock(), 6), "prev": self._prev, **body}
        encoded = {"keys": _json(record["keys"])}
        record["hash"] = record_hash(record, encoded)
        self._file.write(canonical(record, encoded) + b"\n")
        self._seq, self._prev = self._seq + 1, record["hash"]

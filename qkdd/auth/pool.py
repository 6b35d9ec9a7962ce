"""A link's authentication pool: secret 128-bit chunks at numbered positions, each used for one Wegman-Carter
hash key or pad and then erased (never reused), seeded from the pre-shared secret and refilled from QKD output.

Both ends hold the same chunk at the same position: the seed fills positions 0..n-1 at both, and every
frame's refill goes to the positions Alice announced in her authenticated TAG_A. Alice allocates (the
lowest positions she holds); Bob takes exactly the positions she names. A chunk is deleted in the same
SQLite transaction that hands it out, before any tag is computed with it, so a crash at any point (kill
-9) can lose chunks but never hand one out twice; the deleted rows are zeroed (secure_delete). Alice's
next refill position is a counter in the same file, advanced before it is announced. Alice's chunks are
always a subset of Bob's: she takes first and refills last (only after Bob's tag, when Bob has refilled),
so a frame cut short leaves at most chunks at Bob that Alice never names again.

Chunks are sealed with AES-256-GCM under the key store's KEK, bound to their link and position.
"""
from __future__ import annotations

import os
import sqlite3

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qkdd.auth.secret import AuthSecret
from qkdd.auth.wegman_carter import CHUNK_BYTES
from qkdd.sqlite_batch import Database, SavepointTransactions, create_schema

CHUNK_BITS = 8 * CHUNK_BYTES
_NONCE_BYTES = 12
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (link_id TEXT NOT NULL, name TEXT NOT NULL, value NOT NULL,
                                 PRIMARY KEY (link_id, name));
CREATE TABLE IF NOT EXISTS chunks (link_id TEXT NOT NULL, pos INTEGER NOT NULL, nonce BLOB NOT NULL,
                                   sealed BLOB NOT NULL, PRIMARY KEY (link_id, pos))
"""


class AuthPoolError(Exception):
    """The pool cannot be opened or seeded (the message says why and what to do)."""


class PoolDry(AuthPoolError):
    """Fewer chunks than a frame needs: the link halts until the pool is seeded again."""


class PositionUnavailable(LookupError):
    """A named position holds no chunk here (already used, or never held)."""


class AuthPool(SavepointTransactions):
    """The authentication pool of one link in `path` (one SQLite file, shared by links in their own rows)."""

    def __init__(self, path: str, kek: bytes, link_id: str, *, metrics=None):
        self.path = path
        self.link_id = link_id
        self.metrics = metrics             # LinkMetrics or None: qkd_auth_pool_bits, ..._consumed_total
        self._aead = AESGCM(kek)
        try:
            self._init_transactions(Database(path, secure_delete=True))
            with self._tx() as db:
                create_schema(db, _SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise AuthPoolError(f"authentication pool {path}: {exc}") from None
        os.chmod(path, 0o600)
        self._publish()

    # -- seeding --------------------------------------------------------------------------------------
    def seed(self, secret: AuthSecret) -> bool:
        """Seed positions 0..n-1 from the pre-shared secret, once: True if it did; False if this secret
        seeded the pool before (its chunks are never put back); AuthPoolError for another secret."""
        if secret.link_id != self.link_id:
            raise AuthPoolError(f"authentication secret is for link {secret.link_id!r}, not {self.link_id!r}")
        with self._tx() as db:
            seeded = self._meta(db, "secret_id")
            if seeded == secret.secret_id:
                return False
            if seeded is not None:
                raise AuthPoolError(f"authentication pool of link {self.link_id} was seeded from secret {seeded}, "
                                    f"this file holds secret {secret.secret_id}; to start over with a new secret, "
                                    f"remove {self.path} at both ends")
            chunks = secret.chunks()
            db.executemany("INSERT INTO chunks (link_id, pos, nonce, sealed) VALUES (?, ?, ?, ?)",
                           [self._sealed(pos, chunk) for pos, chunk in enumerate(chunks)])
            self._set_meta(db, "secret_id", secret.secret_id)
            self._set_meta(db, "next_refill", len(chunks))
            self._set_meta(db, "consumed_bits", 0)
        self._publish()
        return True

    @property
    def seeded(self) -> bool:
        with self._lock:
            return self._meta(self._db, "secret_id") is not None

    # -- spending -------------------------------------------------------------------------------------
    def allocate(self, count: int) -> list[tuple[int, bytes]]:
        """Alice: the `count` lowest positions this end holds, with their chunks, erased here; PoolDry when
        it holds fewer (nothing is taken then)."""
        with self._tx() as db:
            rows = db.execute("SELECT pos, nonce, sealed FROM chunks WHERE link_id = ? ORDER BY pos LIMIT ?",
                              (self.link_id, count)).fetchall()
            if len(rows) < count:
                raise PoolDry(f"authentication pool of link {self.link_id} holds {len(rows)} chunks of "
                              f"{CHUNK_BITS} bits, a frame needs {count}")
            taken = [(pos, self._open(pos, nonce, sealed)) for pos, nonce, sealed in rows]
            self._erase(db, [pos for pos, _ in taken])
        self._spent(count)
        return taken

    def take(self, positions: list[int]) -> list[bytes]:
        """Bob: the chunks at exactly `positions`, erased here; PositionUnavailable (nothing taken) when one
        is not held (used before: never handed out twice)."""
        with self._tx() as db:
            chunks = []
            for pos in positions:
                row = db.execute("SELECT nonce, sealed FROM chunks WHERE link_id = ? AND pos = ?",
                                 (self.link_id, pos)).fetchone()
                if row is None:
                    raise PositionUnavailable(f"pool position {pos} holds no chunk at this end (used before, "
                                              "or never held)")
                chunks.append(self._open(pos, *row))
            self._erase(db, positions)
        self._spent(len(positions))
        return chunks

    def reserve_refill(self, count: int) -> int:
        """Alice: the first of `count` fresh positions for a frame's refill (never announced before)."""
        with self._tx() as db:
            first = int(self._meta(db, "next_refill") or 0)
            self._set_meta(db, "next_refill", first + count)
        return first

    def refill(self, position: int, material: bytes) -> None:
        """Store a frame's refill (whole chunks of QKD output) at `position` onwards."""
        if len(material) % CHUNK_BYTES:
            raise ValueError(f"refill of {len(material)} bytes is not whole {CHUNK_BYTES}-byte chunks")
        rows = [self._sealed(position + i, material[CHUNK_BYTES * i:CHUNK_BYTES * (i + 1)])
                for i in range(len(material) // CHUNK_BYTES)]
        with self._tx() as db:
            try:
                db.executemany("INSERT INTO chunks (link_id, pos, nonce, sealed) VALUES (?, ?, ?, ?)", rows)
            except sqlite3.IntegrityError:
                raise PositionUnavailable(f"refill at position {position}: a position is already held") from None
        self._publish()

    # -- accounting -----------------------------------------------------------------------------------
    @property
    def chunks(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM chunks WHERE link_id = ?", (self.link_id,)).fetchone()[0]

    @property
    def bits(self) -> int:
        return CHUNK_BITS * self.chunks

    @property
    def consumed_bits(self) -> int:
        with self._lock:
            return int(self._meta(self._db, "consumed_bits") or 0)

    def positions(self) -> list[int]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT pos FROM chunks WHERE link_id = ? ORDER BY pos",
                                                       (self.link_id,))]

    # -- internals ------------------------------------------------------------------------------------
    def _erase(self, db: sqlite3.Connection, positions: list[int]) -> None:
        db.executemany("DELETE FROM chunks WHERE link_id = ? AND pos = ?", [(self.link_id, p) for p in positions])
        consumed = int(self._meta(db, "consumed_bits") or 0)
        self._set_meta(db, "consumed_bits", consumed + CHUNK_BITS * len(positions))

    def _spent(self, count: int) -> None:
        if self.metrics is not None:
            self.metrics.auth_consumed(CHUNK_BITS * count)
        self._publish()

    def _publish(self) -> None:
        if self.metrics is not None:
            self.metrics.auth_pool(self.bits)

    def _meta(self, db: sqlite3.Connection, name: str):
        row = db.execute("SELECT value FROM meta WHERE link_id = ? AND name = ?", (self.link_id, name)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, db: sqlite3.Connection, name: str, value) -> None:
        db.execute("INSERT INTO meta (link_id, name, value) VALUES (?, ?, ?) ON CONFLICT (link_id, name) "
                   "DO UPDATE SET value = excluded.value", (self.link_id, name, value))

    def _sealed(self, pos: int, chunk: bytes) -> tuple[str, int, bytes, bytes]:
        if len(chunk) != CHUNK_BYTES:
            raise ValueError(f"a chunk is {CHUNK_BYTES} bytes")
        nonce = os.urandom(_NONCE_BYTES)
        return self.link_id, pos, nonce, self._aead.encrypt(nonce, chunk, self._associated(pos))

    def _open(self, pos: int, nonce: bytes, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(nonce, sealed, self._associated(pos))
        except InvalidTag:
            raise AuthPoolError(f"authentication pool {self.path}: chunk {pos} fails authentication "
                                "(tampered or wrong KEK)") from None

    def _associated(self, pos: int) -> bytes:
        return b"qkdd/auth-pool\x00" + self.link_id.encode() + b"\x00" + pos.to_bytes(8, "little")

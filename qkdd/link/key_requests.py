"""`/v1` key requests of one link over the reservation protocol (purpose KEY): the requesting end reserves
a stored key of its own allocatable share, has the peer reserve the same key id for the same holder,
and hands the key out only after the peer said yes; the peer's consumer then fetches it once by id.

A refusal saying the key is gone at the peer (delivered or unknown there) erases this end's copy too,
so it can never be handed out twice; a request whose session ended keeps this end's copy reserved (the
peer may hold it reserved: neither end hands it out again, and it expires with its frame). A request
the peer did not answer in time is remembered (the newest MAX_ABANDONED): the peer's late answer settles
its key as an answer in time would have, and a late acceptance, which leaves the key reserved for the
same holder at both ends and handed out at neither, makes it the next key this end hands out for that
holder, with no new exchange (a partition no longer strands a key per abandoned request).
"""
from __future__ import annotations

import dataclasses
import uuid
from collections import deque

import trio

from qkdd.keystore import KeyStore, KeyStoreError, KeyState, KeyUnavailable, StoredKey, StoreWriteError
from qkdd.reservation.protocol import Answer, KeyReservation, LateAnswer, Purpose, RefuseReason
from qkdd.reservation.service import ReservationService

RESERVE_TIMEOUT_S = 5.0
HOLDER_PREFIX = "v1:"
ATTEMPTS = 3                      # stored keys tried per request when the peer no longer holds one
MAX_ABANDONED = 4096              # requests remembered for the peer's late answer (the newest)


class KeyRequests:
    """/v1 keys (purpose KEY, holders "v1:<bits>"); SKIP's keys are the same exchange under their own purpose
    and holder prefix (qkdd.skip.keys)."""

    PURPOSE = Purpose.KEY
    HOLDER_PREFIX = HOLDER_PREFIX
    RESERVATION = KeyReservation

    def __init__(self, link_id: str, store: KeyStore, reservations: ReservationService, *, key_bits: int,
                 reserve_timeout_s: float = RESERVE_TIMEOUT_S) -> None:
        self.link_id = link_id
        self.store = store
        self.key_bits = key_bits
        self.reserve_timeout_s = reserve_timeout_s
        self._reservations = reservations
        self._abandoned: dict[str, tuple[str, str]] = {}    # request id -> (key id, holder), oldest first
        self._settled: dict[str, deque[str]] = {}            # holder -> key ids reserved for it at both ends
        reservations.add_purpose(self.PURPOSE, self)

    # -- requesting end -------------------------------------------------------------------------
    async def request_key(self, bits: int) -> StoredKey:
        """A key of `bits` bits both ends hold reserved for a /v1 consumer, delivered here.
        KeyUnavailable when no key is stored or the peer is unreachable or refuses."""
        holder = f"{self.HOLDER_PREFIX}{bits}"
        settled = await self._deliver_settled(holder)
        if settled is not None:
            return _truncate(settled, bits)
        if not self._reservations.connected:
            raise KeyUnavailable("the peer is not connected")
        for _ in range(ATTEMPTS):
            (key_id,) = await trio.to_thread.run_sync(
                lambda: self.store.reserve_available(self.link_id, 1, holder, bits=self.key_bits))
            request_id = str(uuid.uuid4())
            outcome = await self._reservations.request(self.RESERVATION(request_id, key_id, holder),
                                                       self.reserve_timeout_s)
            if outcome.accepted:
                key = await trio.to_thread.run_sync(lambda: self.store.deliver(self.link_id, key_id, holder=holder))
                return _truncate(key, bits)
            if outcome.status == "timeout":
                self._remember_abandoned(request_id, key_id, holder)
                raise KeyUnavailable("the peer did not confirm the reservation in time")
            if outcome.status == "lost":
                raise KeyUnavailable("the session with the peer ended before it confirmed the reservation")
            await self._drop_refused(key_id, holder, outcome.reason)
            if outcome.reason is not RefuseReason.KEYS_GONE:
                raise KeyUnavailable(f"the peer refused the reservation: {outcome.reason.name.lower()}")
        raise KeyUnavailable("no key both ends hold")

    def _remember_abandoned(self, request_id: str, key_id: str, holder: str) -> None:
        self._abandoned[request_id] = (key_id, holder)
        if len(self._abandoned) > MAX_ABANDONED:
            del self._abandoned[next(iter(self._abandoned))]     # its key stays reserved until it expires

    async def on_late_answer(self, link_id: str, event: LateAnswer) -> None:
        """The peer answered a request this end gave up on: settle its key as the answer says."""
        abandoned = self._abandoned.pop(event.request_id, None)
        if abandoned is None:
            return
        key_id, holder = abandoned
        if event.accepted:      # past MAX_ABANDONED the oldest drops out and stays reserved until it expires
            self._settled.setdefault(holder, deque(maxlen=MAX_ABANDONED)).append(key_id)
            return
        try:
            await self._drop_refused(key_id, holder, event.reason)
        except KeyStoreError:       # expired meanwhile, or the store cannot write: it stays reserved until expiry
            pass

    async def _drop_refused(self, key_id: str, holder: str, reason: RefuseReason | None) -> None:
        """The peer refused to reserve `key_id`: erase this end's copy when the peer no longer holds it (it
        delivered or lost it, so this copy must never be handed out either), else free it."""
        if reason is RefuseReason.KEYS_GONE:
            await trio.to_thread.run_sync(lambda: self.store.deliver(self.link_id, key_id, holder=holder))
        else:
            await trio.to_thread.run_sync(self.store.release, self.link_id, [key_id])

    async def _deliver_settled(self, holder: str) -> StoredKey | None:
        """A key a late acceptance left reserved for `holder` at both ends, delivered here; None if none."""
        settled = self._settled.get(holder)
        while settled:
            key_id = settled.popleft()
            try:
                return await trio.to_thread.run_sync(
                    lambda: self.store.deliver(self.link_id, key_id, holder=holder))
            except KeyStoreError:              # expired meanwhile (or erased by a resync): the next one
                continue
        return None

    async def fetch_key(self, key_id: str) -> StoredKey:
        """Deliver a key the peer reserved for a /v1 consumer (once). KeyStoreError subclasses otherwise."""
        def deliver() -> StoredKey:
            state = self.store.state(self.link_id, key_id)
            if state is not KeyState.RESERVED:
                if state in (KeyState.DELIVERED, KeyState.EXPIRED):
                    return self.store.deliver(self.link_id, key_id)   # raises KeyAlreadyDelivered
                raise KeyUnavailable(f"key {key_id} was not handed out at the other end")
            holder = self.store.holder_of(self.link_id, key_id) or ""
            if not holder.startswith(self.HOLDER_PREFIX):
                raise KeyUnavailable(f"key {key_id} is reserved for another consumer")
            key = self.store.deliver(self.link_id, key_id, holder=holder)
            return _truncate(key, _bits_of(holder, self.HOLDER_PREFIX))
        return await trio.to_thread.run_sync(deliver)

    # -- receiving end --------------------------------------------------------------------------
    async def on_reservations(self, link_id: str, reservations: list[KeyReservation]) -> list[Answer]:
        return [await self._reserve(reservation) for reservation in reservations]

    async def _reserve(self, reservation: KeyReservation) -> Answer:
        key_id, holder = reservation.key_id, reservation.holder
        if not holder.startswith(self.HOLDER_PREFIX) or _bits_of(holder, self.HOLDER_PREFIX) <= 0:
            return Answer(reservation.request_id, RefuseReason.MALFORMED, "unknown holder")

        def reserve() -> None:
            if self.store.state(self.link_id, key_id) is KeyState.PENDING:
                # the peer holds it AVAILABLE, so its frame committed there: promote it here too
                self.store.apply_resync(self.link_id, [key_id], [], [])
            self.store.reserve_ids(self.link_id, [key_id], holder)
        try:
            await trio.to_thread.run_sync(reserve)
        except StoreWriteError:                 # the store cannot record it (a full disk): nothing reserved here
            return Answer(reservation.request_id, RefuseReason.STORE_FAILURE, "key store cannot write")
        except KeyStoreError as exc:
            gone = type(exc).__name__ in ("KeyAlreadyDelivered", "KeyNotFound")
            return Answer(reservation.request_id, RefuseReason.KEYS_GONE if gone else RefuseReason.KEYS_UNAVAILABLE,
                          type(exc).__name__)
        return Answer(reservation.request_id)


def _bits_of(holder: str, prefix: str = HOLDER_PREFIX) -> int:
    try:
        return int(holder[len(prefix):])
    except ValueError:
        return 0


def _truncate(key: StoredKey, bits: int) -> StoredKey:
    if not 0 < bits < key.bits:
        return key
    return dataclasses.replace(key, bits=bits, material=key.material[:bits // 8])

"""The chunks of ETSI 004 key streams on one link: which stored keys are chunk `index` of stream `KSID`,
agreed with the other end over the reservation protocol (purpose STREAM) before either end hands it out.

Theory of operation
-------------------
The application at each end that opens the same KSID must get the same chunk at the same index. The end
whose application first asks for chunk (KSID, index) assigns it: it reserves enough stored keys of its own
share under a tentative holder ("004?:<ksid>:<index>"), sends RESERVE STREAM (KSID, index, key ids sorted)
and, once the peer recorded the same keys under the final holder ("004:<ksid>:<index>"), moves its own to
the final holder and hands the chunk out, in one transaction. The chunk is the keys' material concatenated
in key-id order, cut to the chunk size, so both ends build it alike. Every later request for that index,
at either end and after a restart, finds the chunk by its holder in the key store; a chunk handed out or
erased (its keys are tombstones) is never built again.

Safety: for each index at most one RESERVE is ever accepted. At each end one index is, at any moment,
idle, being assigned here (an *attempt*: from looking it up in the store to handing it out or giving up),
or being recorded from the peer; an attempt waits for a recording of its index to finish and then finds
the chunk, and the answering end decides on a RESERVE without waiting:

    answering end holds the index (final)                 same keys: ACCEPT (a retry); other keys: REFUSE
    an attempt runs here, or tentative keys are held      alice: REFUSE; bob: record the keys and ACCEPT
    otherwise                                             record the keys (of the peer's share) and ACCEPT

Why bob may accept while it assigns: alice sent that RESERVE from an attempt, and an attempt starts only
when the index is neither recorded nor being recorded at alice, and alice refuses every RESERVE while the
attempt runs and after it (final, or tentative keys); so bob's own RESERVE for the index is refused. A
refused requester releases its tentative keys and looks again once the winner's assignment, which reached
it before the refusal, is recorded. A request that timed out or whose session ended keeps its tentative
keys, and the next attempt sends the same keys again (idempotent at the peer).

Competing for key: an attempt that finds no stored key of its share, or finds one ranked before it waiting
for key, waits (RETRY_INTERVAL_S) and is listed as waiting with its rank (the stream's priority, then its
deadline: qkdd.etsi004.streams.Stream.rank); an attempt reserves keys only while no waiting attempt ranks
before it, so when the stock cannot serve every stream the higher-priority streams are served first.

TTL: a chunk recorded for the peer gets its deadline (`ttl_for(stream_id)` seconds from now, wall clock) in
`deadlines` (qkdd.etsi004.deadlines) in the transaction that records it; handing a chunk out or erasing it
removes its deadline in the same transaction.
"""
from __future__ import annotations

import logging
import math
import sqlite3
import time
import uuid
from typing import Callable

import trio

from qkdd.keystore import KeyStore, KeyStoreError, KeyState, KeyUnavailable, StoreWriteError
from qkdd.reservation.protocol import Answer, ChunkReservation, Purpose, RefuseReason
from qkdd.reservation.service import ReservationService

log = logging.getLogger("qkdd.etsi004")

RESERVE_TIMEOUT_S = 5.0
RETRY_INTERVAL_S = 0.05           # a key-less or unanswered attempt is tried again after this
REFUSED_WAIT_S = 1.0              # a refused attempt waits this long at most for the winner's assignment
ATTEMPT, RECORDING = "attempt", "recording"


class ChunkError(Exception):
    """Chunk not handed out; `status` is the ETSI 004 status that says why (qkdd.etsi004.wire.Status)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


def final_holder(stream_id: str, index: int) -> str:
    return f"004:{uuid.UUID(stream_id).hex}:{index}"


def tentative_holder(stream_id: str, index: int) -> str:
    return f"004?:{uuid.UUID(stream_id).hex}:{index}"


def parse_holder(holder: str) -> tuple[str, int] | None:
    """(stream id hex, index) of a final or tentative chunk holder; None for anything else."""
    prefix, _, rest = holder.partition(":")
    stream_hex, _, index = rest.partition(":")
    if prefix not in ("004", "004?") or len(stream_hex) != 32 or not index.isdigit():
        return None
    return stream_hex, int(index)


class _Index:
    """What runs on one index at this end, and who waits for it to end."""

    def __init__(self, doing: str) -> None:
        self.doing = doing
        self.done = trio.Event()          # the attempt or recording ended
        self.recorded = trio.Event()      # the peer's assignment was recorded (during an attempt)


class StreamChunks:
    """Chunk agreement of one link: `await chunk(...)` at the requesting end, the STREAM purpose handler at
    the answering end."""

    def __init__(self, link_id: str, role: str, store: KeyStore, reservations: ReservationService, *,
                 key_bits: int, deadlines=None, wall_clock: Callable[[], float] = time.time) -> None:
        self.link_id = link_id
        self.role = role
        self.store = store
        self.key_bits = key_bits
        self.deadlines = deadlines    # a qkdd.etsi004.deadlines.ChunkDeadlines in the store's file, or None
        self.wall_clock = wall_clock
        self._reservations = reservations
        self._busy: dict[tuple[str, int], _Index] = {}
        self._waiting: dict[tuple[str, int], tuple] = {}     # attempts waiting for key -> their rank
        self.on_recorded = None       # called (stream_id, index) when the peer assigned a chunk here (TTL)
        self.ttl_for: Callable[[str], float] | None = None   # a stream's TTL in seconds (deadlines of recorded chunks)
        reservations.add_purpose(Purpose.STREAM, self)

    @property
    def connected(self) -> bool:
        return self._reservations.connected

    def keys_per_chunk(self, chunk_bytes: int) -> int:
        return math.ceil(chunk_bytes * 8 / self.key_bits)

    # -- requesting end -------------------------------------------------------------------------
    async def chunk(self, stream_id: str, index: int, chunk_bytes: int, rank: tuple = (0, 0.0)) -> bytes:
        """Chunk `index` of the stream, handed out here once. Waits (the caller bounds it with the stream's
        timeout) while keys are missing, an attempt of better `rank` waits for key, or the peer is away;
        ChunkError(INSUFFICIENT_KEY) if the chunk was handed out or erased before."""
        key = (stream_id, index)
        try:
            while True:
                running = self._busy.get(key)
                if running is not None:
                    await running.done.wait()
                    continue
                attempt = self._busy[key] = _Index(ATTEMPT)
                try:
                    chunk = await self._attempt(attempt, stream_id, index, chunk_bytes, rank)
                finally:
                    del self._busy[key]
                    attempt.done.set()
                if chunk is not None:
                    return chunk
        finally:
            self._waiting.pop(key, None)

    def _outranked(self, key: tuple[str, int], rank: tuple) -> bool:
        return any(other < rank for waiting, other in self._waiting.items() if waiting != key)

    async def _attempt(self, attempt: _Index, stream_id: str, index: int, chunk_bytes: int,
                       rank: tuple) -> bytes | None:
        """One attempt: the chunk, or None to try again."""
        from qkdd.etsi004.wire import Status
        final, tentative = final_holder(stream_id, index), tentative_holder(stream_id, index)
        held = await trio.to_thread.run_sync(self._held, final, tentative)
        if held[final]:
            with trio.CancelScope(shield=True):     # once erased here, the chunk must reach the caller
                return await trio.to_thread.run_sync(self._deliver_all, held[final], stream_id, index, final,
                                                     chunk_bytes)
        if held["gone"]:
            raise ChunkError(Status.INSUFFICIENT_KEY, f"chunk {index} was handed out or erased")
        if not self.connected:
            await trio.sleep(RETRY_INTERVAL_S)
            return None
        key_ids = held[tentative]
        if not key_ids:
            key = (stream_id, index)
            if self._outranked(key, rank):
                self._waiting[key] = rank
                await trio.sleep(RETRY_INTERVAL_S)      # a chunk ranked before this one waits for key
                return None
            try:
                key_ids = await trio.to_thread.run_sync(self._reserve_own, tentative,
                                                        self.keys_per_chunk(chunk_bytes))
            except KeyUnavailable:
                self._waiting[key] = rank
                await trio.sleep(RETRY_INTERVAL_S)      # no key yet: wait for the link
                return None
            self._waiting.pop(key, None)
        outcome = await self._reservations.request(
            ChunkReservation(str(uuid.uuid4()), stream_id, index, tuple(sorted(key_ids))), RESERVE_TIMEOUT_S)
        if outcome.accepted:
            with trio.CancelScope(shield=True):     # the peer recorded it: so must this end, and hand it out
                return await trio.to_thread.run_sync(self._confirm, key_ids, stream_id, index, chunk_bytes)
        if outcome.status == "refused":
            # The other end assigns this index: its RESERVE came before its refusal and is recorded here
            # (or is being recorded, or was earlier).
            if not await trio.to_thread.run_sync(self._release_and_look, key_ids, final):
                with trio.move_on_after(REFUSED_WAIT_S):
                    await attempt.recorded.wait()
            return None
        await trio.sleep(RETRY_INTERVAL_S)           # timeout or lost: the same keys again next time
        return None

    def _held(self, final: str, tentative: str) -> dict:
        held: dict = {final: [], tentative: [], "gone": False}
        for holder in (final, tentative):
            for key_id, state in self.store.stream_keys(self.link_id, holder):
                if state is KeyState.RESERVED:
                    held[holder].append(key_id)
                elif holder == final:
                    held["gone"] = True
        if (held[final] or held["gone"]) and held[tentative]:
            self.store.release(self.link_id, held[tentative])    # an assignment here that lost: keys back
            held[tentative] = []
        if held["gone"]:
            held[final] = []         # part of the chunk is gone: the rest is never handed out alone
        return held

    def _reserve_own(self, tentative: str, count: int) -> list[str]:
        return self.store.reserve_available(self.link_id, count, tentative, bits=self.key_bits)

    def _release_and_look(self, key_ids: list[str], final: str) -> bool:
        """Release this end's tentative keys; whether the index is recorded (final) here already."""
        self.store.release(self.link_id, key_ids)
        return bool(self.store.stream_keys(self.link_id, final))

    def _confirm(self, key_ids: list[str], stream_id: str, index: int, chunk_bytes: int) -> bytes:
        """Tentative keys to the final holder and handed out, in one transaction (one fsync)."""
        final = final_holder(stream_id, index)
        with self.store.batch():
            self.store.rehold(self.link_id, key_ids, tentative_holder(stream_id, index), final)
            return self._deliver(key_ids, stream_id, index, final, chunk_bytes)

    def _deliver_all(self, key_ids: list[str], stream_id: str, index: int, holder: str, chunk_bytes: int) -> bytes:
        with self.store.batch():
            return self._deliver(key_ids, stream_id, index, holder, chunk_bytes)

    def _deliver(self, key_ids: list[str], stream_id: str, index: int, holder: str, chunk_bytes: int) -> bytes:
        material = b"".join(self.store.deliver(self.link_id, key_id, holder=holder).material
                            for key_id in sorted(key_ids))
        if self.deadlines is not None:
            self.deadlines.disarm(self.link_id, stream_id, index)
        return material[:chunk_bytes]

    def erase(self, stream_id: str, index: int) -> int:
        """Erase chunk `index` unfetched (TTL): its keys become tombstones, its deadline goes, in one
        transaction. Blocking; the number of keys erased."""
        erased = 0
        with self.store.batch():
            for holder in (final_holder(stream_id, index), tentative_holder(stream_id, index)):
                for key_id, state in self.store.stream_keys(self.link_id, holder):
                    if state is KeyState.RESERVED:
                        self.store.deliver(self.link_id, key_id, holder=holder)
                        erased += 1
            if self.deadlines is not None:
                self.deadlines.disarm(self.link_id, stream_id, index)
        return erased

    # -- answering end --------------------------------------------------------------------------
    async def on_reservations(self, link_id: str, reservations: list[ChunkReservation]) -> list[Answer]:
        """The peer's assignments of one payload, decided at once and recorded in one group commit."""
        answers: dict[str, Answer] = {}
        to_record: list[tuple[ChunkReservation, bool]] = []      # (reservation, whether this end yields)
        started: list[tuple[tuple[str, int], _Index]] = []
        for reservation in reservations:
            key = (reservation.stream_id, reservation.index)
            running = self._busy.get(key)
            if running is None:
                running = self._busy[key] = _Index(RECORDING)
                started.append((key, running))
                to_record.append((reservation, False))
            elif running.doing == ATTEMPT and self.role != "alice":
                to_record.append((reservation, True))
            else:
                answers[reservation.request_id] = Answer(reservation.request_id, RefuseReason.KEYS_UNAVAILABLE,
                                                         "this end assigns that chunk")
        try:
            if to_record:
                answers.update(await trio.to_thread.run_sync(self._record_all, to_record))
        finally:
            for key, running in started:
                del self._busy[key]
                running.done.set()
        for reservation, _ in to_record:
            if answers[reservation.request_id].accepted:
                key = (reservation.stream_id, reservation.index)
                running = self._busy.get(key)
                if running is not None:
                    running.recorded.set()
                if self.on_recorded is not None:
                    self.on_recorded(*key)
        return [answers[reservation.request_id] for reservation in reservations]

    def _record_all(self, to_record: list[tuple[ChunkReservation, bool]]) -> dict[str, Answer]:
        with self.store.batch():
            return {reservation.request_id: self._record(reservation, yields)
                    for reservation, yields in to_record}

    def _record(self, reservation: ChunkReservation, yields: bool) -> Answer:
        final = final_holder(reservation.stream_id, reservation.index)
        try:
            held = self.store.stream_keys(self.link_id, final)
            if held:
                if sorted(key_id for key_id, _ in held) == sorted(reservation.key_ids):
                    return Answer(reservation.request_id)
                return Answer(reservation.request_id, RefuseReason.KEYS_UNAVAILABLE, "chunk assigned otherwise")
            if not yields and self.role == "alice" and self.store.stream_keys(
                    self.link_id, tentative_holder(reservation.stream_id, reservation.index)):
                return Answer(reservation.request_id, RefuseReason.KEYS_UNAVAILABLE, "this end assigns that chunk")
            with self.store.batch():          # a savepoint: the keys and their deadline, or neither
                self.store.reserve_ids(self.link_id, reservation.key_ids, final, peer_share_only=True)
                if self.deadlines is not None and self.ttl_for is not None:
                    self.deadlines.arm(self.link_id, reservation.stream_id, reservation.index,
                                       self.wall_clock() + self.ttl_for(reservation.stream_id))
            return Answer(reservation.request_id)
        except (StoreWriteError, sqlite3.Error):
            return Answer(reservation.request_id, RefuseReason.STORE_FAILURE, "key store cannot write")
        except KeyStoreError as exc:
            gone = type(exc).__name__ in ("KeyAlreadyDelivered", "KeyNotFound")
            return Answer(reservation.request_id, RefuseReason.KEYS_GONE if gone else RefuseReason.KEYS_UNAVAILABLE,
                          type(exc).__name__)

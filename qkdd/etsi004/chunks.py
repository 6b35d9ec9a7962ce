"""The chunks of ETSI 004 key streams on one link: which stored keys are chunk `index` of stream `KSID`,
agreed with the other end over the reservation protocol (purpose STREAM) before either end hands it out.

Theory of operation
-------------------
The application at each end that opens the same KSID must get the same chunk at the same index. The end
whose application first asks for chunk (KSID, index) assigns it: it reserves enough stored keys of its own
share under a tentative holder ("004?:<ksid>:<index>"), sends RESERVE STREAM (KSID, index, key ids sorted)
and, once the peer recorded the same keys under the final holder ("004:<ksid>:<index>"), moves its own to
the final holder and hands the chunk out. The chunk is the keys' material concatenated in key-id order,
cut to the chunk size, so both ends build it alike. Every later request for that index, at either end and
after a restart, finds the chunk by its holder in the key store; a chunk already handed out (its keys are
tombstones) is never built again.

Both ends may assign the same index at once. The answering end decides, by the link's roles:

    answering end holds the index already (final)      same keys: ACCEPT (a retry); other keys: REFUSE
    answering end is assigning the index itself        alice: REFUSE (its own assignment wins); bob: ACCEPT
    otherwise                                          record the keys (of the peer's share) and ACCEPT

A refused requester releases its tentative keys and looks again: the winner's RESERVE reached it before
the refusal, so the final holder appears. A request that timed out or whose session ended keeps its
tentative keys, and the next request for the index sends the same keys again (idempotent at the peer).
"""
from __future__ import annotations

import logging
import math
import uuid

import trio

from qkdd.keystore import KeyStore, KeyStoreError, KeyState, KeyUnavailable, StoreWriteError
from qkdd.reservation.protocol import Answer, ChunkReservation, Purpose, RefuseReason
from qkdd.reservation.service import ReservationService

log = logging.getLogger("qkdd.etsi004")

RESERVE_TIMEOUT_S = 5.0
RETRY_INTERVAL_S = 0.05           # a refused or key-less request looks again after this


class ChunkError(Exception):
    """Chunk not handed out; `status` is the ETSI 004 status that says why (qkdd.etsi004.wire.Status)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


def final_holder(stream_id: str, index: int) -> str:
    return f"004:{uuid.UUID(stream_id).hex}:{index}"


def tentative_holder(stream_id: str, index: int) -> str:
    return f"004?:{uuid.UUID(stream_id).hex}:{index}"


class StreamChunks:
    """Chunk agreement of one link: `await chunk(...)` at the requesting end, the STREAM purpose handler at
    the answering end."""

    def __init__(self, link_id: str, role: str, store: KeyStore, reservations: ReservationService, *,
                 key_bits: int) -> None:
        self.link_id = link_id
        self.role = role
        self.store = store
        self.key_bits = key_bits
        self._reservations = reservations
        self._assigning: set[tuple[str, int]] = set()     # indexes this end is assigning now
        self.on_recorded = None       # called (stream_id, index) when the peer assigned a chunk here (TTL)
        reservations.add_purpose(Purpose.STREAM, self)

    @property
    def connected(self) -> bool:
        return self._reservations.connected

    def keys_per_chunk(self, chunk_bytes: int) -> int:
        return math.ceil(chunk_bytes * 8 / self.key_bits)

    # -- requesting end -------------------------------------------------------------------------
    async def chunk(self, stream_id: str, index: int, chunk_bytes: int) -> bytes:
        """Chunk `index` of the stream, handed out here once. Waits (the caller bounds it with the stream's
        timeout) while keys are missing or the peer is away; ChunkError(INSUFFICIENT_KEY) if the chunk was
        handed out or erased before."""
        from qkdd.etsi004.wire import Status
        final, tentative = final_holder(stream_id, index), tentative_holder(stream_id, index)
        while True:
            held = await trio.to_thread.run_sync(self._held, final, tentative)
            if held[final]:
                with trio.CancelScope(shield=True):     # once erased here, the chunk must reach the caller
                    return await trio.to_thread.run_sync(self._deliver, held[final], final, chunk_bytes)
            if held["gone"]:
                raise ChunkError(Status.INSUFFICIENT_KEY, f"chunk {index} was handed out or erased")
            if not self.connected:
                await trio.sleep(RETRY_INTERVAL_S)
                continue
            key_ids = held[tentative]
            self._assigning.add((stream_id, index))
            try:
                if not key_ids:
                    try:
                        key_ids = await trio.to_thread.run_sync(
                            self._reserve_own, tentative, self.keys_per_chunk(chunk_bytes))
                    except KeyUnavailable:
                        await trio.sleep(RETRY_INTERVAL_S)      # no key yet: wait for the link
                        continue
                outcome = await self._reservations.request(
                    ChunkReservation(str(uuid.uuid4()), stream_id, index, tuple(sorted(key_ids))), RESERVE_TIMEOUT_S)
            finally:
                self._assigning.discard((stream_id, index))
            if outcome.accepted:
                with trio.CancelScope(shield=True):     # the peer recorded it: so must this end
                    await trio.to_thread.run_sync(self.store.rehold, self.link_id, key_ids, tentative, final)
                continue                                       # delivered from the final holder above
            if outcome.status == "refused":
                await trio.to_thread.run_sync(self.store.release, self.link_id, key_ids)
            await trio.sleep(RETRY_INTERVAL_S)

    def _held(self, final: str, tentative: str) -> dict:
        held: dict = {final: [], tentative: [], "gone": False}
        for holder in (final, tentative):
            for key_id, state in self.store.held_by(self.link_id, holder):
                if state is KeyState.RESERVED:
                    held[holder].append(key_id)
                elif holder == final:
                    held["gone"] = True
        if held["gone"]:
            held[final] = []         # part of the chunk is gone: the rest is never handed out alone
        return held

    def _reserve_own(self, tentative: str, count: int) -> list[str]:
        return self.store.reserve_available(self.link_id, count, tentative, bits=self.key_bits)

    def _deliver(self, key_ids: list[str], holder: str, chunk_bytes: int) -> bytes:
        material = b"".join(self.store.deliver(self.link_id, key_id, holder=holder).material
                            for key_id in sorted(key_ids))
        return material[:chunk_bytes]

    def erase(self, stream_id: str, index: int) -> int:
        """Erase chunk `index` unfetched (TTL): its keys become tombstones. Blocking; the number erased."""
        erased = 0
        for holder in (final_holder(stream_id, index), tentative_holder(stream_id, index)):
            for key_id in self.store.reserved_for(self.link_id, holder):
                self.store.deliver(self.link_id, key_id, holder=holder)
                erased += 1
        return erased

    # -- answering end --------------------------------------------------------------------------
    async def on_reservations(self, link_id: str, reservations: list[ChunkReservation]) -> list[Answer]:
        return [await self._answer(reservation) for reservation in reservations]

    async def _answer(self, reservation: ChunkReservation) -> Answer:
        stream_id, index = reservation.stream_id, reservation.index
        if (stream_id, index) in self._assigning and self.role == "alice":
            return Answer(reservation.request_id, RefuseReason.KEYS_UNAVAILABLE, "this end assigns that chunk")
        final = final_holder(stream_id, index)

        def record() -> Answer:
            held = self.store.held_by(self.link_id, final)
            if held:
                if sorted(key_id for key_id, _ in held) == sorted(reservation.key_ids):
                    return Answer(reservation.request_id)
                return Answer(reservation.request_id, RefuseReason.KEYS_UNAVAILABLE, "chunk assigned otherwise")
            self.store.reserve_ids(self.link_id, reservation.key_ids, final, peer_share_only=True)
            return Answer(reservation.request_id)
        try:
            answer = await trio.to_thread.run_sync(record)
            if answer.accepted and self.on_recorded is not None:
                self.on_recorded(stream_id, index)
            return answer
        except StoreWriteError:
            return Answer(reservation.request_id, RefuseReason.STORE_FAILURE, "key store cannot write")
        except KeyStoreError as exc:
            gone = type(exc).__name__ in ("KeyAlreadyDelivered", "KeyNotFound")
            return Answer(reservation.request_id, RefuseReason.KEYS_GONE if gone else RefuseReason.KEYS_UNAVAILABLE,
                          type(exc).__name__)

"""The reservation protocol (protocol.py) on a link's classical channel: one ReservationService per link,
registered as the link's reservation kind, shared by every key consumer (/v1 key requests, the ETSI 014
KME, WireGuard epochs; ETSI 004 streams, SKIP and KMS pushes later).

Requesting end: `await service.request(reservation, timeout_s)` sends RESERVE and returns the Outcome
(accepted, refused with the peer's reason, timeout, or lost with the session); a request that times out
is abandoned, so a late answer is reported to its purpose as such, never as an acceptance. Receiving end:
each purpose's handler gets the reservations of one payload together (`on_reservations`, so the KME can
record them in one group commit) and returns one Answer per reservation. Announcements (WireGuard's
current epoch) go to the purpose's `on_announcement`; each handler's `on_session(service)` runs once per
session (WireGuard's HELLO) beside the exchange. A purpose handler that fails is logged and the exchange
goes on for every purpose (a consumer's bug never stops the others' reservations).

Each end writes whatever queued while its previous write was on the way as one payload (messages back to
back, `pack_payloads`), so a busy link carries one record per burst instead of one per request. At most
MAX_RECORDING reservations from the peer are being answered at once; past that the session's reader
waits, so a peer that sends faster than this end can record is slowed down, never queued without end.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import trio

from qkdd.link_channel import RESERVATION_CHANNEL, LinkChannel
from qkdd.log_limit import RateLimitedLog
from qkdd.peer import MuxStream, PeerError, SessionClosedError
from qkdd.peer.budget import ByteBudget
from qkdd.reservation.protocol import (AnnouncementReceived, Answer, EpochAnnouncement, KemAnnouncement, LateAnswer,
                                       Purpose, RefuseReason, Reservation, ReservationAccepted, ReservationEndpoint,
                                       ReservationProtocolError, ReservationReceived, ReservationRefused,
                                       pack_payloads)

log = logging.getLogger("qkdd.reservation")

MAX_RECORDING = 4096             # reservations from the peer being answered at once, per session
SWEEP_INTERVAL_S = 0.25          # how often unanswered requests are checked against their deadline


@dataclass(frozen=True)
class Outcome:
    """What became of a request: "accepted", "refused" (reason, the peer's text), "timeout" or "lost"."""

    status: str
    reason: RefuseReason | None = None
    text: str = ""

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"


class PurposeHandler(Protocol):
    async def on_reservations(self, link_id: str, reservations: list) -> list[Answer]: ...


class _Pending:
    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.done = trio.Event()
        self.outcome = Outcome("lost")

    def finish(self, outcome: Outcome) -> None:
        if not self.done.is_set():
            self.outcome = outcome
            self.done.set()


class ReservationService:
    def __init__(self, link_id: str, channel: LinkChannel) -> None:
        self.link_id = link_id
        self._purposes: dict[Purpose, PurposeHandler] = {}
        self._endpoint: ReservationEndpoint | None = None     # the live session's
        self._outbox: _Outbox | None = None
        self._pending: dict[str, _Pending] = {}
        self._peer_log = RateLimitedLog(log)     # what a peer's messages cause: at most a few lines a second
        channel.register(RESERVATION_CHANNEL, self._serve)

    def add_purpose(self, purpose: Purpose, handler: PurposeHandler) -> None:
        if purpose in self._purposes:
            raise ValueError(f"link {self.link_id}: reservations of purpose {purpose.name} have a handler already")
        self._purposes[purpose] = handler

    @property
    def connected(self) -> bool:
        """A session is live and the exchange runs on it."""
        return self._outbox is not None

    # -- requesting end -------------------------------------------------------------------------
    async def request(self, reservation: Reservation, timeout_s: float) -> Outcome:
        """Have the peer reserve `reservation`. ValueError, sending nothing, if it cannot be encoded."""
        endpoint, outbox = self._endpoint, self._outbox
        if endpoint is None or outbox is None:
            return Outcome("lost", text="the peer is not connected")
        message = endpoint.reserve(reservation)
        request_id = reservation.request_id
        pending = self._pending[request_id] = _Pending(trio.current_time() + timeout_s)
        try:
            outbox.put(message)
            await pending.done.wait()              # the sweep ends the wait at the deadline
        finally:
            del self._pending[request_id]
            if pending.outcome.status not in ("accepted", "refused") and endpoint is self._endpoint \
                    and endpoint.state("master", request_id) is not None:
                endpoint.abandon(request_id)        # a late answer is then reported as such
        return pending.outcome

    def announce(self, announcement: "EpochAnnouncement | KemAnnouncement") -> bool:
        """Queue an announcement for the peer; False when no session is live."""
        if self._endpoint is None or self._outbox is None:
            return False
        self._outbox.put(self._endpoint.announce(announcement))
        return True

    # -- one session ----------------------------------------------------------------------------
    async def _serve(self, stream: MuxStream) -> None:
        endpoint, outbox = ReservationEndpoint(), _Outbox(stream.send)
        recording = ByteBudget(MAX_RECORDING)      # counted in reservations, not bytes
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(outbox.run, nursery.cancel_scope)
                nursery.start_soon(self._sweep)
                nursery.start_soon(self._peer_log.run)
                self._endpoint, self._outbox = endpoint, outbox
                for purpose, handler in self._purposes.items():
                    on_session = getattr(handler, "on_session", None)
                    if on_session is not None:
                        nursery.start_soon(self._guarded, purpose, "on_session", on_session, self)
                try:     # each payload straight from the session's reader: no task switch per record
                    await stream.serve_inline(
                        lambda payload: self._on_payload(endpoint, outbox, payload, recording, nursery))
                except SessionClosedError:
                    pass
                nursery.cancel_scope.cancel()
        finally:
            endpoint.end_session()                      # answers never cross sessions
            if self._endpoint is endpoint:
                self._endpoint, self._outbox = None, None
            for pending in self._pending.values():     # their answers can no longer arrive
                pending.finish(Outcome("lost", text="the session with the peer ended"))
            self._peer_log.flush()

    async def _sweep(self) -> None:
        """End the requests unanswered past their deadline (one sweep for all, not a scope per request)."""
        while True:
            await trio.sleep(SWEEP_INTERVAL_S)
            now = trio.current_time()
            for pending in list(self._pending.values()):
                if pending.deadline <= now:
                    pending.finish(Outcome("timeout", text="the peer did not answer the reservation in time"))

    async def _on_payload(self, endpoint: ReservationEndpoint, outbox: "_Outbox", payload: bytes,
                          recording: ByteBudget, nursery: trio.Nursery) -> None:
        try:
            events = endpoint.receive(payload)
        except ReservationProtocolError as exc:
            self._peer_log.log(logging.WARNING, "reservation-malformed",
                               "link %s: dropped a reservation payload from the peer: %s", self.link_id, exc)
            return
        received: dict[Purpose, list] = {}
        for event in events:
            if isinstance(event, ReservationReceived):
                received.setdefault(event.reservation.purpose, []).append(event.reservation)
            elif isinstance(event, ReservationAccepted):
                self._finish(event.request_id, Outcome("accepted"))
            elif isinstance(event, ReservationRefused):
                self._peer_log.log(logging.WARNING, "reservation-refused", "link %s: the peer refused %s "
                                   "reservation %s (%s): %s", self.link_id, event.purpose.name, event.request_id,
                                   event.reason.name, event.text)
                self._finish(event.request_id, Outcome("refused", event.reason, event.text))
            elif isinstance(event, LateAnswer):
                self._to_purpose(event.purpose, "on_late_answer", event, nursery)
            elif isinstance(event, AnnouncementReceived):
                self._to_purpose(event.announcement.purpose, "on_announcement", event.announcement, nursery)
        for purpose, reservations in received.items():
            # Answered beside the reader, so that reservations arriving meanwhile join the next group
            # commit; a peer sending faster than this end records waits here (backpressure).
            await recording.acquire(len(reservations))
            nursery.start_soon(self._answer, endpoint, outbox, purpose, reservations, recording)

    def _finish(self, request_id: str, outcome: Outcome) -> None:
        pending = self._pending.get(request_id)
        if pending is not None:
            pending.finish(outcome)

    def _to_purpose(self, purpose: Purpose, method: str, event, nursery: trio.Nursery) -> None:
        handler = getattr(self._purposes.get(purpose), method, None)
        if handler is not None:
            nursery.start_soon(self._guarded, purpose, method, handler, self.link_id, event)
        elif method == "on_late_answer":
            self._peer_log.log(logging.WARNING, "reservation-late-answer",
                               "link %s: late answer to abandoned %s request %s (accepted=%s); its keys at the "
                               "peer stay reserved until they expire", self.link_id, purpose.name,
                               event.request_id, event.accepted)

    async def _guarded(self, purpose: Purpose, method: str, call, *args):
        """`await call(*args)`, its result; None if it failed. A purpose handler's failure (a consumer's bug)
        is logged and ends that call only, never the exchange every purpose shares on this session; a
        PeerError still ends the session."""
        try:
            return await call(*args)
        except PeerError:
            raise
        except Exception:
            self._peer_log.log(logging.ERROR, "reservation-handler-failed", "link %s: %s of the %s reservations "
                               "failed; the exchange goes on", self.link_id, method, purpose.name, exc_info=True)
            return None

    async def _answer(self, endpoint: ReservationEndpoint, outbox: "_Outbox", purpose: Purpose,
                      reservations: list, recording: ByteBudget) -> None:
        try:
            handler = self._purposes.get(purpose)
            if handler is None:
                answers = [Answer(r.request_id, RefuseReason.MALFORMED,
                                  f"this end serves no {purpose.name} reservations") for r in reservations]
            else:
                answers = await self._guarded(purpose, "on_reservations", handler.on_reservations, self.link_id,
                                              reservations) or []      # failed: the peer's requests time out
            for answer in answers:
                if endpoint.state("slave", answer.request_id) is None:
                    continue        # the session ended while the handler decided: no answer can reach the peer
                if not answer.accepted:
                    self._peer_log.log(logging.WARNING, "reservation-refusing", "link %s: refused %s reservation "
                                       "%s from the peer (%s): %s", self.link_id, purpose.name, answer.request_id,
                                       answer.reason.name, answer.text)
                outbox.put(answer.encode(endpoint))
        finally:
            recording.release(len(reservations))


class _Outbox:
    """Messages to the peer, written by one task: whatever queued while the previous write was on its
    way goes out as one payload, so a burst of requests costs one record, not one per request."""

    def __init__(self, send) -> None:
        self._send = send                   # async send(payload) of the session's stream
        self._queue: list[bytes] = []
        self._wakeup = trio.Event()

    def put(self, message: bytes) -> None:
        self._queue.append(message)
        self._wakeup.set()

    async def run(self, session_scope: trio.CancelScope) -> None:
        try:
            while True:
                await self._wakeup.wait()
                await trio.sleep(0)         # the requests runnable now queue theirs first: one write for all
                self._wakeup = trio.Event()
                queued, self._queue = self._queue, []
                for payload in pack_payloads(queued):
                    await self._send(payload)
        except SessionClosedError:
            session_scope.cancel()

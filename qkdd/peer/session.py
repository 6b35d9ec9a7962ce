"""One authenticated session over one connection: runs the handshake, then carries MACed records.

`PeerSession.establish(stream, ...)` drives handshake.py over any trio stream (TLS in production) and
returns the session; `run()` is its reader and heartbeat (the connector runs it in a nursery), while the
application calls `send(channel, payload)` and `receive() -> (channel, payload)` from its own tasks. Any
failure (bad MAC, replay, framing error, idle timeout, end of stream without a CLOSE record) tears the
whole session down: `run()` raises the PeerError and every later send/receive raises SessionClosedError.
Received records wait for the application in a queue bounded by records and by bytes (budget.py); when
it is full the reader stops reading, so the peer is slowed by TCP flow control, never dropped. A session
routed with `route_all` hands every record straight from the reader to its dispatcher instead (the
link's channel multiplexer, qkdd.peer.mux).
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from cryptography.hazmat.primitives.asymmetric import mldsa

from .budget import ByteBudget
from .errors import (FrameError, HandshakeError, PeerError, PeerRefusedError, PeerTimeoutError,
                     SessionClosedError, SessionTruncatedError)
from .framing import Frame, FrameDecoder, FrameType
from .handshake import Alert, Handshake, Role, alert_frame, alert_name
from .identity import format_fingerprint, key_fingerprint
from .records import MAX_CHANNEL, RECORD_OVERHEAD_BYTES, RecordOpener, RecordSealer
from .settings import PeerSettings

log = logging.getLogger("qkdd.peer")

RECEIVE_CHUNK_BYTES = 256 * 1024
# A record this large is sealed (its MAC) and opened in a worker thread and written in SEND_CHUNK_BYTES
# pieces, so that the event loop never waits for it (HMAC and TLS release the GIL; the payload is not copied).
OFFLOAD_BYTES = 1 << 20
SEND_CHUNK_BYTES = 1 << 20
ALERT_SEND_TIMEOUT_S = 1.0
CLOSE_SEND_TIMEOUT_S = 2.0


async def _send_alert(stream: trio.abc.Stream, code: int) -> None:
    """Best effort: tell the peer why the handshake stops (it may already be gone)."""
    with trio.move_on_after(ALERT_SEND_TIMEOUT_S):
        try:
            await stream.send_all(alert_frame(code).to_bytes())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


class PeerSession:
    def __init__(self, stream: trio.abc.Stream, decoder: FrameDecoder, handshake: Handshake,
                 settings: PeerSettings, peer_address: str) -> None:
        keys = handshake.keys
        assert keys is not None
        self.link_id = settings.link_id
        self.role = handshake.role
        self.session_id = keys.session_id
        self.peer_address = peer_address
        self.epoch = 0  # set by the connector: 1 for its first session, +1 per new session
        self.max_payload_bytes = settings.max_record_bytes - RECORD_OVERHEAD_BYTES
        self._settings = settings
        self._stream = stream
        self._decoder = decoder
        self._sealer = RecordSealer(keys.send_key, settings.transcript_channels)
        self._opener = RecordOpener(keys.receive_key, settings.transcript_channels)
        self._send_lock = trio.Lock()
        self._to_app, self._from_peer = trio.open_memory_channel[tuple[int, bytes]](settings.receive_queue_records)
        self.receive_queue_bytes = settings.receive_queue_bytes
        self._queued = ByteBudget(settings.receive_queue_bytes)   # payload bytes in _to_app
        self._dispatch: Callable[[int, bytes], Awaitable[None]] | None = None   # route_all
        self._reading = False
        self._scope: trio.CancelScope | None = None
        self._error: PeerError | None = None
        self._closed = False
        self.ended = trio.Event()
        self.last_received_s = trio.current_time()   # trio clock: when bytes last came from the peer

    def __repr__(self) -> str:
        return f"PeerSession(link={self.link_id!r}, id={self.session_id}, {self.role.value}, epoch={self.epoch})"

    # -- establishment -----------------------------------------------------------------------------
    @classmethod
    async def establish(cls, stream: trio.abc.Stream, role: Role, settings: PeerSettings,
                        signing_key: mldsa.MLDSA65PrivateKey, pinned_peer_key: mldsa.MLDSA65PublicKey,
                        peer_address: str = "?") -> "PeerSession":
        """Run the authenticated handshake over `stream`. No timeout here: the caller bounds it.
        Raises HandshakeError / FrameError / SessionTruncatedError; the caller closes the stream."""
        decoder = FrameDecoder(settings.max_record_bytes, accept_records=False)
        handshake = Handshake(role, settings.link_id, signing_key, pinned_peer_key)
        try:
            await _send_frames(stream, handshake.start())
            while not handshake.established:
                frame = decoder.next_frame()
                if frame is None:
                    data = await _receive_some(stream, " during the handshake")
                    if not data:
                        partial = decoder.buffered_bytes
                        raise SessionTruncatedError(
                            f"{peer_address} closed the connection during the handshake"
                            + (f" ({partial} bytes of a partial frame)" if partial else ""))
                    decoder.receive_data(data)
                    continue
                await _send_frames(stream, handshake.receive(frame))
        except HandshakeError as exc:
            if not isinstance(exc, PeerRefusedError):
                await _send_alert(stream, exc.alert)
            raise
        except FrameError:
            await _send_alert(stream, Alert.DECODE_ERROR)
            raise
        decoder.accept_records = True
        session = cls(stream, decoder, handshake, settings, peer_address)
        log.info("link %s: session %s established with %s as %s (peer key %s)", settings.link_id,
                 session.session_id, peer_address, role.value,
                 format_fingerprint(key_fingerprint(pinned_peer_key)))
        return session

    # -- application API ---------------------------------------------------------------------------
    async def send(self, channel: int, payload: bytes) -> None:
        """Send `payload` on `channel` (0..65535). Raises SessionClosedError if the session is over."""
        await self.send_many([(channel, payload)])

    async def send_many(self, messages: list[tuple[int, bytes]]) -> None:
        """Send several (channel, payload) records in one write: same records as separate send() calls,
        a fraction of the per-call cost for many small messages (e.g. a round of parities)."""
        for _, payload in messages:
            if len(payload) > self.max_payload_bytes:
                raise ValueError(
                    f"payload of {len(payload)} bytes exceeds the record cap of {self.max_payload_bytes}")
        if len(messages) == 1 and len(messages[0][1]) >= OFFLOAD_BYTES:
            channel, payload = messages[0]
            if not 0 <= channel <= MAX_CHANNEL:             # refused here: a refusal in the thread ends the session
                raise ValueError(f"channel {channel} outside 0..{MAX_CHANNEL}")
            await self._send_record(lambda: self._sealer.data_pieces(channel, payload), in_thread=True)
        elif messages:
            await self._send_record(lambda: [self._sealer.data(channel, payload) for channel, payload in messages])

    def route_all(self, dispatch: Callable[[int, bytes], Awaitable[None]]) -> None:
        """Hand each record to `await dispatch(channel, payload)` from the reader, in order, instead of
        queueing it for receive(). The reader waits while dispatch runs (that is the backpressure), so
        dispatch raises nothing. Only before the reader starts (run()), so that no record can have gone
        to the queue."""
        if self._reading:
            raise RuntimeError(f"link {self.link_id}: session routed after it began reading")
        self._dispatch = dispatch

    async def receive(self) -> tuple[int, bytes]:
        """The next (channel, payload) from the peer, in order. Raises SessionClosedError at the end."""
        try:
            channel, payload = await self._from_peer.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise SessionClosedError(self._end_message()) from None
        self._queued.release(len(payload))
        return channel, payload

    async def aclose(self) -> None:
        """End the session cleanly: an authenticated CLOSE record, then close the connection."""
        if not self._closed:
            with trio.move_on_after(CLOSE_SEND_TIMEOUT_S):
                try:
                    await self._send_record(self._sealer.close)
                except SessionClosedError:
                    pass
        self._teardown(None)
        await trio.aclose_forcefully(self._stream)

    def abandon(self, reason: str) -> None:
        """Tear the session down at once without a CLOSE record (its connection is stalled): run() raises
        PeerTimeoutError(reason), later sends and receives SessionClosedError."""
        self._teardown(PeerTimeoutError(reason))

    @property
    def transport_socket(self):
        """The TCP socket under the session's stream (TLS or plain), or None (e.g. an in-memory stream)."""
        stream = self._stream
        while stream is not None and not hasattr(stream, "socket"):
            stream = getattr(stream, "transport_stream", None)
        return None if stream is None else stream.socket

    @property
    def queued_bytes(self) -> int:
        """Payload bytes received and not yet taken by the application."""
        return self._queued.held_bytes

    @property
    def closed(self) -> bool:
        return self._closed

    # -- driver (run by the connector) --------------------------------------------------------------
    async def run(self) -> None:
        """Read records and send heartbeats until the session ends. Returns after the peer's CLOSE or a
        local aclose(); raises the PeerError that tore the session down otherwise."""
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                if self._closed:
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._heartbeat)
                try:
                    await self._read_loop()
                    log.info("link %s: session %s closed by the peer", self.link_id, self.session_id)
                except PeerError as exc:
                    self._teardown(exc)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._teardown(SessionTruncatedError(f"connection broken: {type(exc).__name__}"))
                self._teardown(None)
        finally:
            with trio.CancelScope(shield=True):
                await self.aclose()  # a local shutdown (cancellation) still ends with a CLOSE record
            self._to_app.close()
            self.ended.set()
        if self._error is not None:
            raise self._error

    async def _read_loop(self) -> None:
        self._reading = True
        while True:
            frame = self._decoder.next_frame()
            if frame is None:
                if self._decoder.at_eof:
                    raise SessionTruncatedError("connection ended without the peer's authenticated close")
                self._decoder.receive_data(await self._receive_with_idle_timeout())
                continue
            if frame.type == FrameType.ALERT:  # e.g. the initiator failed our key confirmation
                raise PeerRefusedError(f"peer aborted the session: {alert_name(frame.body)}",
                                       Alert.INTERNAL_ERROR)
            if len(frame.body) >= OFFLOAD_BYTES:
                record = await trio.to_thread.run_sync(self._opener.open, frame)
            else:
                record = self._opener.open(frame)
            if record.type in (FrameType.DATA, FrameType.TRANSCRIPT_DATA):
                if self._dispatch is not None:
                    await self._dispatch(record.channel, record.payload)
                else:
                    await self._queued.acquire(len(record.payload))   # backpressure by bytes...
                    await self._to_app.send((record.channel, record.payload))   # ...and by records
            elif record.type == FrameType.CLOSE:
                return

    async def _receive_with_idle_timeout(self) -> bytes:
        with trio.move_on_after(self._settings.idle_timeout_s):
            data = await _receive_some(self._stream, "")
            self.last_received_s = trio.current_time()
            return data
        raise PeerTimeoutError(f"no record from the peer for {self._settings.idle_timeout_s:g} s")

    async def _heartbeat(self) -> None:
        while True:
            await trio.sleep(self._settings.heartbeat_interval_s)
            try:
                await self._send_record(self._sealer.ping)
            except SessionClosedError:
                return

    async def _send_record(self, seal, *, in_thread: bool = False) -> None:
        """Seal and send under the send lock (sequence numbers go out in order). `seal` returns a Frame or a
        list of them, or with `in_thread` (run in a worker thread) the wire bytes in pieces."""
        async with self._send_lock:
            if self._closed:
                raise SessionClosedError(self._end_message())
            if not in_thread:
                sealed = seal()
                frames: list[Frame] = sealed if isinstance(sealed, list) else [sealed]
            sent = False
            try:
                if in_thread:
                    for piece in await trio.to_thread.run_sync(seal):
                        for offset in range(0, len(piece), SEND_CHUNK_BYTES):
                            await self._stream.send_all(piece[offset:offset + SEND_CHUNK_BYTES])
                else:
                    await self._stream.send_all(b"".join(frame.to_bytes() for frame in frames))
                sent = True
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._teardown(SessionTruncatedError(f"connection broken while sending: {type(exc).__name__}"))
                raise SessionClosedError(self._end_message()) from None
            finally:
                if not sent and not self._closed:
                    # A send cut short (cancelled) leaves a partial frame on the wire: the stream is unusable.
                    self._teardown(SessionTruncatedError("a send was interrupted mid-record"))

    def _teardown(self, error: PeerError | None) -> None:
        if error is not None and self._error is None and not self._closed:
            self._error = error
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()

    def _end_message(self) -> str:
        reason = str(self._error) if self._error is not None else "closed"
        return f"link {self.link_id}: session {self.session_id} is over ({reason})"


async def _send_frames(stream: trio.abc.Stream, frames: list[Frame]) -> None:
    if frames:
        await stream.send_all(b"".join(frame.to_bytes() for frame in frames))


async def _receive_some(stream: trio.abc.Stream, when: str) -> bytes:
    try:
        return await stream.receive_some(RECEIVE_CHUNK_BYTES)
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        detail = f"{type(cause).__name__}: {cause}" if cause is not None else "broken"
        raise SessionTruncatedError(f"connection broken{when}: {detail}") from None



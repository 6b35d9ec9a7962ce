"""The ETSI GS QKD 004 listener: TLS with client certificates on a port of its own, the binary framing of
wire.py, OPEN_CONNECT / GET_KEY / CLOSE over the streams of streams.py and the chunks of chunks.py.

A client is known by the SHA-256 fingerprint of its certificate; a KSID belongs to the client that opened
it. Requests on a connection are answered in order. A GET_KEY waits for pacing (max_bps) and then for its
chunk up to the stream's timeout (TIMEOUT_ERROR after); a KSID this client has not opened is answered
NO_QKD_CONNECTION (GS QKD 004 has no status of its own for it). Key material is never logged.

TTL timers: a stream's chunks asked here and not fetched are timed in memory (Stream.assigned); chunks the
peer assigned are also timed here (for a stream not open here, with the config's default TTL) and their
deadlines are durable (qkdd.etsi004.deadlines, recorded with the chunk). At start-up restore_deadlines()
erases the chunks whose deadline passed while the daemon was down and times the rest from their durable
deadlines; a chunk held in the store without a deadline (its GET_KEY cut short by the stop) gets the
default TTL from start-up.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import ssl
import uuid
from typing import Callable

import trio

from qkdd.etsi004.chunks import ChunkError, StreamChunks, parse_holder
from qkdd.etsi004.streams import Defaults, Stream, Streams, negotiate
from qkdd.etsi004.wire import (NIL_KSID, Close, FrameReader, GetKey, OpenConnect, Status, WireError,
                               close_response, get_key_response, open_connect_response)
from qkdd.http.tls import peer_certificate
from qkdd.metrics import AppLinkMetrics

log = logging.getLogger("qkdd.etsi004")

HANDSHAKE_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 300.0
TTL_SWEEP_S = 1.0
MAX_CONNECTIONS = 256


class Etsi004Server:
    def __init__(self, host: str, port: int, chunks: StreamChunks, tls: ssl.SSLContext | None, *,
                 capacity_bps: Callable[[], float], defaults: Defaults = Defaults(),
                 metrics: AppLinkMetrics | None = None) -> None:
        self.host, self.port = host, port
        self.chunks = chunks
        self.tls = tls
        self.capacity_bps = capacity_bps
        self.defaults = defaults
        self.metrics = metrics if metrics is not None else AppLinkMetrics(chunks.link_id)
        self.streams = Streams()
        self._retired: list[Stream] = []        # closed streams whose unfetched chunks still await their TTL
        self._timers: dict[tuple[str, int], float] = {}   # (stream hex, index) -> trio time: other chunks' TTL
        self._slots = trio.CapacityLimiter(MAX_CONNECTIONS)
        self._scope = trio.CancelScope()
        chunks.on_recorded = self._recorded
        chunks.ttl_for = self._ttl_s

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until shutdown() or cancellation; reports the bound (host, port). The TTL deadlines are
        restored first."""
        await self.restore_deadlines()
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sweep_ttl)
                address = listeners[0].socket.getsockname()[:2]
                log.info("etsi004 listening on %s:%d (TLS)", address[0], address[1])
                task_status.started(address)
                await trio.serve_listeners(self._serve, listeners, handler_nursery=nursery)

    def shutdown(self) -> None:
        """Stop now: key streams are long-lived connections, so there is nothing to drain."""
        self._scope.cancel()

    def _open_stream(self, stream_id: str) -> Stream | None:
        return next((stream for stream in self.streams.all() if stream.key_stream_id == stream_id), None)

    def _ttl_s(self, stream_id: str) -> float:
        """The TTL of a chunk the peer assigned: its stream's here, or the default for a stream not open here."""
        stream = self._open_stream(stream_id)
        return stream.qos.ttl_s if stream is not None else self.defaults.ttl_s

    def _recorded(self, stream_id: str, index: int) -> None:
        stream = self._open_stream(stream_id)
        if stream is not None:
            stream.assigned.setdefault(index, trio.current_time())
        else:
            self._timers.setdefault((uuid.UUID(stream_id).hex, index), trio.current_time() + self.defaults.ttl_s)

    async def restore_deadlines(self) -> int:
        """Erase the chunks whose durable deadline passed (while the daemon was down) and time the others;
        the number of chunks erased. Does nothing without a deadlines table."""
        deadlines = self.chunks.deadlines
        if deadlines is None:
            return 0
        link_id, wall_now, now = self.chunks.link_id, self.chunks.wall_clock(), trio.current_time()

        def load() -> dict[tuple[str, int], float]:
            pending = deadlines.pending(link_id)
            unarmed = {chunk for chunk in map(parse_holder, self.chunks.store.stream_holders(link_id))
                       if chunk is not None and chunk not in pending}
            deadlines.arm_many(link_id, [(stream, index, wall_now + self.defaults.ttl_s) for stream, index in unarmed])
            return {**pending, **{chunk: wall_now + self.defaults.ttl_s for chunk in unarmed}}

        pending = await trio.to_thread.run_sync(load)
        erased = 0
        for (stream_hex, index), expires_at in pending.items():
            if expires_at <= wall_now:
                erased += bool(await trio.to_thread.run_sync(self.chunks.erase, stream_hex, index))
            else:
                self._timers[(stream_hex, index)] = now + (expires_at - wall_now)
        self.metrics.expired(erased)
        if erased or self._timers:
            log.info("etsi004: %d chunks erased at start-up (TTL ran out while stopped), %d TTL timers restored",
                     erased, len(self._timers))
        return erased

    async def _sweep_ttl(self) -> None:
        while True:
            await trio.sleep(TTL_SWEEP_S)
            await self.sweep_ttl_once()

    async def sweep_ttl_once(self) -> int:
        """Erase every chunk assigned and not fetched within its TTL; the number of chunks erased."""
        now, erased = trio.current_time(), 0
        for stream in self.streams.all() + self._retired:
            for index in stream.expired(now):
                erased += bool(await trio.to_thread.run_sync(self.chunks.erase, stream.key_stream_id, index))
        self._retired = [stream for stream in self._retired if stream.assigned]
        for chunk in [chunk for chunk, at in self._timers.items() if at <= now]:
            del self._timers[chunk]
            erased += bool(await trio.to_thread.run_sync(self.chunks.erase, *chunk))
        self.metrics.expired(erased)
        return erased

    # -- one connection -------------------------------------------------------------------------
    async def _serve(self, transport: trio.abc.Stream) -> None:
        async with self._slots:
            try:
                await self._connection(transport)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
                pass
            finally:
                await trio.aclose_forcefully(transport)

    async def _connection(self, transport: trio.abc.Stream) -> None:
        owner = "anonymous"
        stream: trio.abc.Stream = transport
        if self.tls is not None:
            tls_stream = trio.SSLStream(transport, self.tls, server_side=True)
            with trio.move_on_after(HANDSHAKE_TIMEOUT_S) as handshake:
                await tls_stream.do_handshake()
            if handshake.cancelled_caught:
                return
            try:
                certificate = peer_certificate(tls_stream)
            except ValueError:          # accepted by OpenSSL, but not X.509 that can be read
                return
            if certificate is None:
                return
            owner = "sha256:" + certificate.sha256_fingerprint
            stream = tls_stream
        reader = FrameReader()
        while True:
            with trio.move_on_after(IDLE_TIMEOUT_S):
                data = await stream.receive_some(65536)
            if not data:
                return
            try:
                requests = reader.feed(data)
            except WireError as exc:
                log.warning("etsi004: malformed request, connection closed: %s", exc)
                return
            for request in requests:
                await stream.send_all(await self.answer(request, owner))

    async def answer(self, request, owner: str) -> bytes:
        response = await self._answer(request, owner)
        status = Status(int.from_bytes(response[8:12], "big"))    # every response's payload starts with it
        if status is not Status.SUCCESSFUL:
            self.metrics.refused(status.name.lower())
        self.metrics.streams(len(self.streams.all()))
        return response

    async def _answer(self, request, owner: str) -> bytes:
        if isinstance(request, OpenConnect):
            return self._open(request, owner)
        if isinstance(request, GetKey):
            return await self._get_key(request, owner)
        assert isinstance(request, Close)
        stream = self.streams.close(request.key_stream_id, owner)
        if stream is None:
            return close_response(Status.NO_QKD_CONNECTION)
        if stream.assigned:
            self._retired.append(stream)
        return close_response(Status.SUCCESSFUL)

    def _open(self, request: OpenConnect, owner: str) -> bytes:
        if not self.chunks.connected:
            return open_connect_response(Status.NO_QKD_CONNECTION)
        key_stream_id = request.key_stream_id if request.key_stream_id != NIL_KSID else str(uuid.uuid4())
        existing = self.streams.get(key_stream_id, owner)
        if existing is not None:               # re-OPEN: the QoS first granted (clause 6.1)
            return open_connect_response(Status.SUCCESSFUL, existing.qos, key_stream_id)
        status, qos = negotiate(request.qos, self.capacity_bps(), self.defaults,
                                committed_bps=self.streams.committed_bps(request.qos.priority))
        if status is not Status.SUCCESSFUL:
            return open_connect_response(status, qos, key_stream_id)
        status, _ = self.streams.open(key_stream_id, self.chunks.link_id, owner, qos)
        return open_connect_response(status, qos, key_stream_id)

    async def _get_key(self, request: GetKey, owner: str) -> bytes:
        stream = self.streams.get(request.key_stream_id, owner)
        if stream is None:
            return get_key_response(Status.NO_QKD_CONNECTION)
        metadata = b""
        if stream.qos.metadata_mimetype:
            metadata = json.dumps({"key_stream_id": stream.key_stream_id, "index": request.index,
                                   "key_chunk_size": stream.qos.key_chunk_size}).encode()
            if request.metadata_size < len(metadata):
                return get_key_response(Status.METADATA_SIZE_INSUFFICIENT)
        started = trio.current_time()
        with trio.move_on_after(stream.qos.timeout_ms / 1000) as scope:
            await trio.sleep(stream.delay_s(trio.current_time()))
            stream.assigned.setdefault(request.index, trio.current_time())
            try:
                key = await self.chunks.chunk(stream.key_stream_id, request.index, stream.qos.key_chunk_size,
                                              stream.rank())
            except ChunkError as exc:
                stream.assigned.pop(request.index, None)
                return get_key_response(Status(exc.status))
        if scope.cancelled_caught:
            await self._arm(stream, request.index)
            return get_key_response(Status.TIMEOUT if self.chunks.connected else Status.NO_QKD_CONNECTION)
        stream.assigned.pop(request.index, None)
        self._timers.pop((uuid.UUID(stream.key_stream_id).hex, request.index), None)
        now = trio.current_time()
        stream.served(now)
        self.metrics.chunk_delivered(len(key), now - started)
        return get_key_response(Status.SUCCESSFUL, request.index, key, metadata)

    async def _arm(self, stream: Stream, index: int) -> None:
        """A GET_KEY cut short (timeout) may leave its chunk's keys held here: its TTL deadline, durable."""
        asked_at = stream.assigned.get(index)
        if self.chunks.deadlines is None or asked_at is None:
            return
        expires_at = self.chunks.wall_clock() + stream.qos.ttl_s - (trio.current_time() - asked_at)
        try:
            await trio.to_thread.run_sync(self.chunks.deadlines.arm, self.chunks.link_id, stream.key_stream_id,
                                          index, expires_at)
        except sqlite3.Error as exc:        # the in-memory timer still runs; only a restart would miss it
            log.warning("etsi004: cannot record a chunk's TTL deadline: %s", type(exc).__name__)

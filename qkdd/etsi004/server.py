"""The ETSI GS QKD 004 listener: TLS with client certificates on a port of its own, the binary framing of
wire.py, OPEN_CONNECT / GET_KEY / CLOSE over the streams of streams.py and the chunks of chunks.py.

A client is known by the SHA-256 fingerprint of its certificate; a KSID belongs to the client that opened
it. Requests on a connection are answered in order. A GET_KEY waits for pacing (max_bps) and then for its
chunk up to the stream's timeout (TIMEOUT_ERROR after); a KSID this client has not opened is answered
NO_QKD_CONNECTION (GS QKD 004 has no status of its own for it). Key material is never logged.
"""
from __future__ import annotations

import json
import logging
import ssl
import uuid
from typing import Callable

import trio

from qkdd.etsi004.chunks import ChunkError, StreamChunks
from qkdd.etsi004.streams import Defaults, Stream, Streams, negotiate
from qkdd.etsi004.wire import (NIL_KSID, Close, FrameReader, GetKey, OpenConnect, Status, WireError,
                               close_response, get_key_response, open_connect_response)
from qkdd.http.tls import peer_certificate

log = logging.getLogger("qkdd.etsi004")

HANDSHAKE_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 300.0
TTL_SWEEP_S = 1.0
MAX_CONNECTIONS = 256


class Etsi004Server:
    def __init__(self, host: str, port: int, chunks: StreamChunks, tls: ssl.SSLContext | None, *,
                 capacity_bps: Callable[[], float], defaults: Defaults = Defaults()) -> None:
        self.host, self.port = host, port
        self.chunks = chunks
        self.tls = tls
        self.capacity_bps = capacity_bps
        self.defaults = defaults
        self.streams = Streams()
        self._retired: list[Stream] = []        # closed streams whose unfetched chunks still await their TTL
        self._slots = trio.CapacityLimiter(MAX_CONNECTIONS)
        self._scope = trio.CancelScope()
        chunks.on_recorded = self._recorded

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until shutdown() or cancellation; reports the bound (host, port)."""
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

    def _recorded(self, stream_id: str, index: int) -> None:
        for stream in self.streams.all():
            if stream.key_stream_id == stream_id:
                stream.assigned.setdefault(index, trio.current_time())

    async def _sweep_ttl(self) -> None:
        while True:
            await trio.sleep(TTL_SWEEP_S)
            await self.sweep_ttl_once()

    async def sweep_ttl_once(self) -> int:
        """Erase every chunk assigned and not fetched within its stream's TTL; the number of chunks."""
        now, erased = trio.current_time(), 0
        for stream in self.streams.all() + self._retired:
            for index in stream.expired(now):
                await trio.to_thread.run_sync(self.chunks.erase, stream.key_stream_id, index)
                erased += 1
        self._retired = [stream for stream in self._retired if stream.assigned]
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
        status, qos = negotiate(request.qos, self.capacity_bps(), self.defaults)
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
        with trio.move_on_after(stream.qos.timeout_ms / 1000) as scope:
            await trio.sleep(stream.delay_s(trio.current_time()))
            stream.assigned.setdefault(request.index, trio.current_time())
            try:
                key = await self.chunks.chunk(stream.key_stream_id, request.index, stream.qos.key_chunk_size)
            except ChunkError as exc:
                stream.assigned.pop(request.index, None)
                return get_key_response(Status(exc.status))
        if scope.cancelled_caught:
            return get_key_response(Status.TIMEOUT if self.chunks.connected else Status.NO_QKD_CONNECTION)
        stream.assigned.pop(request.index, None)
        stream.served(trio.current_time())
        return get_key_response(Status.SUCCESSFUL, request.index, key, metadata)

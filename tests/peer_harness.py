"""Test harness for the classical channel: endpoints that record what arrives, man-in-the-middle proxies
over real TCP (a TLS-terminating one that rewrites frames, a raw one that flips ciphertext), and
authenticated session pairs over in-memory streams (for tests on trio's MockClock)."""
from __future__ import annotations

import math
from typing import Awaitable, Callable

import trio

from qkdd.peer import PeerConnector, PeerSession, PeerSettings, Role
from qkdd.peer import tls
from qkdd.peer.framing import Frame, FrameDecoder

WAIT_S = 10.0  # generous upper bound; the tests finish in well under a second each when healthy


def fast_settings(link_id: str = "link-ab", **kwargs) -> PeerSettings:
    base = dict(handshake_timeout_s=2.0, heartbeat_interval_s=0.3, idle_timeout_s=3.0,
                backoff_initial_s=0.05, backoff_max_s=0.2)
    base.update(kwargs)
    return PeerSettings(link_id, **base)


class Endpoint:
    """One qkdd end: a connector whose session handler forwards every session and message to the test."""

    def __init__(self) -> None:
        self._sessions_in, self._sessions_out = trio.open_memory_channel[PeerSession](math.inf)
        self._messages_in, self._messages_out = trio.open_memory_channel[tuple[int, int, bytes]](math.inf)
        self.connector: PeerConnector | None = None
        self.scope: trio.CancelScope | None = None

    async def on_session(self, session: PeerSession) -> None:
        self._sessions_in.send_nowait(session)
        while True:
            channel, payload = await session.receive()
            self._messages_in.send_nowait((session.epoch, channel, payload))

    async def next_session(self) -> PeerSession:
        with trio.fail_after(WAIT_S):
            return await self._sessions_out.receive()

    async def next_message(self) -> tuple[int, int, bytes]:
        with trio.fail_after(WAIT_S):
            return await self._messages_out.receive()

    async def start(self, nursery: trio.Nursery, settings: PeerSettings, signing_key, pinned_key):
        """Start a connector in its own cancel scope (cancel `self.scope` to kill this end)."""
        self.connector = PeerConnector(settings, signing_key, pinned_key, self.on_session)
        scope = trio.CancelScope()
        self.scope = scope

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            with scope:
                await self.connector.run(task_status=task_status)

        return await nursery.start(run)


Tamper = Callable[[Frame], "list[bytes] | None"]
Direction = Callable[[trio.abc.Stream, trio.abc.Stream], Awaitable[None]]


async def _copy(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
    while data := await source.receive_some(65536):
        await sink.send_all(data)


async def _relay(downstream: trio.abc.Stream, upstream: trio.abc.Stream, dialer_to_listener: Direction,
                 listener_to_dialer: Direction = _copy, *, setup: Callable[[], Awaitable[None]] | None = None):
    """Run `setup`, then both directions until either ends; a broken stream just ends the relay. Both
    streams are closed afterwards."""
    try:
        if setup is not None:
            await setup()
        async with trio.open_nursery() as nursery:
            async def run(direction: Direction, source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
                await direction(source, sink)
                nursery.cancel_scope.cancel()

            nursery.start_soon(run, dialer_to_listener, downstream, upstream)
            nursery.start_soon(run, listener_to_dialer, upstream, downstream)
    except* (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(upstream)
        await trio.aclose_forcefully(downstream)


async def _serve_on_ephemeral_port(handle, task_status) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def frame_rewriting_proxy(target_port: int, tamper: Tamper, *, task_status=trio.TASK_STATUS_IGNORED):
    """A TLS-terminating man in the middle (the peers do not check TLS certificates, so it can be one).
    Frames from the dialer to the listener pass through `tamper`, which returns the bytes to forward
    instead (a list; a None in it, or None instead of the list, ends both connections cleanly at the TLS
    level). Listener-to-dialer bytes pass unchanged."""
    server_context = tls.server_context()
    client_context = tls.client_context()

    async def rewrite_frames(downstream: trio.abc.Stream, upstream: trio.abc.Stream) -> None:
        decoder = FrameDecoder(max_record_bytes=2**31)
        while data := await downstream.receive_some(65536):
            decoder.receive_data(data)
            while (frame := decoder.next_frame()) is not None:
                forward = tamper(frame)
                for chunk in [None] if forward is None else forward:
                    if chunk is None:
                        await upstream.aclose()  # clean TLS close_notify, no CLOSE record
                        await downstream.aclose()
                        return
                    await upstream.send_all(chunk)

    async def handle(downstream_tcp):
        downstream = trio.SSLStream(downstream_tcp, server_context, server_side=True)
        upstream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", target_port), client_context,
                                  server_hostname=None)

        async def handshakes() -> None:
            await downstream.do_handshake()
            await upstream.do_handshake()

        await _relay(downstream, upstream, rewrite_frames, setup=handshakes)

    await _serve_on_ephemeral_port(handle, task_status)


class CiphertextFlipper:
    """A raw TCP proxy that, once armed, flips one byte of the next dialer-to-listener chunk (TLS
    ciphertext: TLS itself rejects it)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.armed = False
        self.flipped = 0

    async def run(self, task_status=trio.TASK_STATUS_IGNORED):
        async def flip_once(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
            while data := await source.receive_some(65536):
                if self.armed:
                    self.armed = False
                    self.flipped += 1
                    data = data[:-1] + bytes([data[-1] ^ 0x01])
                await sink.send_all(data)

        async def handle(downstream):
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            await _relay(downstream, upstream, flip_once)

        await _serve_on_ephemeral_port(handle, task_status)


class TappedStream(trio.abc.Stream):
    """A stream that notes when it writes (`sent_at`, trio time) and, once `silent`, drops what it is
    given: the other end then hears nothing, as from a peer whose process hangs with the connection open."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.sent_at: list[float] = []
        self.silent = False

    async def send_all(self, data) -> None:
        if self.silent:
            await trio.lowlevel.checkpoint()
            return
        self.sent_at.append(trio.current_time())
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def memory_session_pair(initiator_settings: PeerSettings, responder_settings: PeerSettings,
                              initiator_key, responder_key):
    """Two authenticated PeerSessions over `trio.testing.memory_stream_pair()` (the real handshake,
    no sockets), each stream a TappedStream: (initiator's session, responder's, their streams)."""
    from trio.testing import memory_stream_pair
    left, right = memory_stream_pair()
    streams = TappedStream(left), TappedStream(right)
    sessions: dict[Role, PeerSession] = {}

    async def establish(stream, role, settings, key, peer_key) -> None:
        sessions[role] = await PeerSession.establish(stream, role, settings, key, peer_key, "memory")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(establish, streams[0], Role.INITIATOR, initiator_settings, initiator_key,
                           responder_key.public_key())
        nursery.start_soon(establish, streams[1], Role.RESPONDER, responder_settings, responder_key,
                           initiator_key.public_key())
    return sessions[Role.INITIATOR], sessions[Role.RESPONDER], streams

"""Keeps one authenticated session per link alive: dials with backoff, or accepts; replaces a stale session.

The application hands the connector an `on_session(session)` coroutine function. It is called once per
established session (session.epoch counts them), which is how the application learns that a session
(re)started and must resynchronise; it runs while the session lives and is cancelled when the session
is torn down. The session reads its first record only after the handler ran up to its first
checkpoint, so the handler may route the session to itself there (PeerSession.route_all). After a
clean close by the peer it first gets every message sent before the close, then SessionClosedError
from receive(). If the handler returns, the session is closed cleanly. Either way the connector then
brings up the next session by itself: the dialling end redials at once after a session that lived a
while (the peer may be back already, and the surviving end's first attempt is the one that should find
it), then with exponential backoff and jitter (reset by every completed handshake; a refused or reset
connection, the peer's daemon restarting behind its host or a proxy, is redialled after the first delay
without backing off further), the listening end waits for the next connection. A newly
authenticated connection replaces the live one (the peer restarted and its old connection may not
have died yet), so at most one session per link is live and no restart needs a manual step.

The dialling end also watches its live session's connection (once a second, `_redial_when_stalled`):
where the kernel cannot cap TCP's retransmission timeout (tcp_tuning.py), a partition shorter than the
idle timeout leaves the session up but waiting for a retransmission that may come tens of seconds after
the path returned. Once the peer is silent past its heartbeat and TCP backs off beyond the ceiling, the
dialling end tries a new connection every PROBE_INTERVAL_S; the first that completes its handshake
replaces the stalled session at both ends (the application resynchronises as after any new session).
"""
from __future__ import annotations

import logging
import ssl
from typing import Awaitable, Callable

import trio
from cryptography.hazmat.primitives.asymmetric import mldsa

from qkdd.log_limit import RateLimitedLog

from . import tls
from .backoff import Backoff
from .errors import PeerError, PeerResetError, PeerTimeoutError, SessionClosedError, SessionTruncatedError
from .handshake import Role
from .session import PeerSession
from .settings import PeerSettings
from .tcp_tuning import cap_retransmission_timeout, path_stalled, retransmission_state

log = logging.getLogger("qkdd.peer")

DRAIN_AFTER_CLOSE_S = 5.0  # after a clean close, how long the handler may take to read what is queued
PROBE_INTERVAL_S = 1.0     # a stalled session's connection is checked, and a new one tried, this often

SessionHandler = Callable[[PeerSession], Awaitable[None]]


class PeerConnector:
    def __init__(self, settings: PeerSettings, signing_key: mldsa.MLDSA65PrivateKey,
                 pinned_peer_key: mldsa.MLDSA65PublicKey, on_session: SessionHandler) -> None:
        self.settings = settings
        self.role = Role.INITIATOR if settings.dial is not None else Role.RESPONDER
        self.epoch = 0
        self.listen_port: int | None = None
        self._signing_key = signing_key
        self._pinned = pinned_peer_key
        self._on_session = on_session
        self._live: PeerSession | None = None
        self._live_done: trio.Event | None = None
        self._install_lock = trio.Lock()
        self._pending_handshakes = 0
        self._session_changed = trio.Event()
        self._refusals = RateLimitedLog(log)   # anyone who can reach the port can make these at will

    @property
    def session(self) -> PeerSession | None:
        """The live session, if any."""
        live = self._live
        return live if live is not None and not live.closed else None

    async def wait_session(self, after_epoch: int = 0) -> PeerSession:
        """Wait for a live session with epoch > after_epoch."""
        while (live := self.session) is None or live.epoch <= after_epoch:
            await self._session_changed.wait()
        return live

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. With `nursery.start`, returns once dialling began / the port listens."""
        if self.role is Role.INITIATOR:
            await self._dial_forever(task_status)
        else:
            await self._listen_forever(task_status)

    # -- dialling end -------------------------------------------------------------------------------
    async def _dial_forever(self, task_status) -> None:
        context = tls.client_context()
        backoff = Backoff(self.settings.backoff_initial_s, self.settings.backoff_max_s)
        host, port = self.settings.dial
        task_status.started()
        while True:
            try:
                session = await self._dial_once(context, host, port)
            except (OSError, PeerError) as exc:
                # A refusal or reset comes from the peer's host: its daemon is (re)starting and will listen shortly.
                delay_s = backoff.first_delay_s() if _refused(exc) else backoff.next_delay_s()
                log.warning("link %s: cannot establish a session with %s:%d: %s; retrying in %.2f s",
                            self.settings.link_id, host, port, _describe(exc), delay_s)
                await trio.sleep(delay_s)
                continue
            # The peer answered: whatever failed before is over. A peer that restarts twice in a row
            # is redialled after backoff_initial_s, not after the delay its first absence built up.
            backoff.reset()
            started_s = trio.current_time()
            while session is not None:
                session = await self._serve_watching_path(session, context, host, port)
            # A session that lived a while: redial at once (a killed peer's restart is found by the first attempt
            # after it listens, not one backoff delay later). One that ended at once (a peer that drops every
            # new session) is redialled after the backoff delay, so that it is not redialled in a tight loop.
            if trio.current_time() - started_s < self.settings.backoff_max_s:
                await trio.sleep(backoff.next_delay_s())

    async def _serve_watching_path(self, session: PeerSession, context: ssl.SSLContext, host: str,
                                   port: int) -> PeerSession | None:
        """Serve `session` until it ends; the session that replaced it because its connection stalled, if
        one did."""
        replacement: PeerSession | None = None

        async def watch() -> None:
            nonlocal replacement
            replacement = await self._redial_when_stalled(session, context, host, port)
            session.abandon("its connection stalled in TCP's backoff; a new session replaces it")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await self._serve(session)
            nursery.cancel_scope.cancel()
        return replacement

    async def _redial_when_stalled(self, session: PeerSession, context: ssl.SSLContext, host: str,
                                   port: int) -> PeerSession:
        """A new session, dialled once `session`'s connection stalled (see the module docstring); never
        returns while it does not. A new connection that fails is tried again a probe interval later."""
        heartbeat_s = self.settings.heartbeat_interval_s
        probing = False
        while True:
            await trio.sleep(PROBE_INTERVAL_S)
            sock = session.transport_socket
            state = retransmission_state(sock) if sock is not None else None
            silent_s = trio.current_time() - session.last_received_s
            if state is None or not path_stalled(silent_s, heartbeat_s, *state):
                probing = False
                continue
            if not probing:
                probing = True
                log.warning("link %s: nothing from the peer for %.0f s and TCP backs off (retransmission "
                            "timeout %.1f s): trying a new session beside session %s", self.settings.link_id,
                            silent_s, state[1], session.session_id)
            try:
                with trio.fail_after(PROBE_INTERVAL_S):
                    tcp = await trio.open_tcp_stream(host, port)
            except (OSError, trio.TooSlowError):
                continue                       # the path is still cut: the next probe sends a new SYN
            try:
                return await self._dial_once(context, host, port, tcp)
            except (OSError, PeerError) as exc:
                log.warning("link %s: the new session beside stalled session %s failed: %s",
                            self.settings.link_id, session.session_id, _describe(exc))

    async def _dial_once(self, context: ssl.SSLContext, host: str, port: int,
                         connected: trio.SocketStream | None = None) -> PeerSession:
        """A session dialled to host:port, over `connected` if a TCP connection to it is already made."""
        address = f"{host}:{port}"

        async def connect() -> trio.abc.Stream:
            tcp = connected if connected is not None else await trio.open_tcp_stream(host, port)
            cap_retransmission_timeout(tcp.socket)
            return trio.SSLStream(tcp, context, server_hostname=None)

        return await self._open_session(connect, Role.INITIATOR, address)

    async def _open_session(self, connect, role: Role, address: str) -> PeerSession:
        """TCP connect (dialling end), TLS handshake and authenticated handshake, all within
        handshake_timeout_s. Every failure comes out as a PeerError (or OSError from connecting)."""
        stream: trio.abc.Stream | None = None
        try:
            try:
                with trio.fail_after(self.settings.handshake_timeout_s):
                    stream = await connect()
                    await stream.do_handshake()
                    return await PeerSession.establish(stream, role, self.settings, self._signing_key,
                                                       self._pinned, address)
            except trio.TooSlowError:
                raise PeerTimeoutError(f"handshake with {address} not finished within "
                                       f"{self.settings.handshake_timeout_s:g} s") from None
            except trio.BrokenResourceError as exc:
                error = PeerResetError if isinstance(exc.__cause__, _RESETS) else SessionTruncatedError
                raise error(f"TLS with {address} failed: {_describe(exc)}") from None
        except BaseException:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            raise

    # -- listening end ------------------------------------------------------------------------------
    async def _listen_forever(self, task_status) -> None:
        host, port = self.settings.listen
        context = tls.server_context(self.settings.tls_cert_file, self.settings.tls_key_file)
        listeners = await trio.open_tcp_listeners(port, host=host or None)
        self.listen_port = listeners[0].socket.getsockname()[1]
        log.info("link %s: listening for the peer on %s:%d", self.settings.link_id, host, self.listen_port)
        task_status.started(self.listen_port)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._refusals.run)        # summaries of held-back lines
                await trio.serve_listeners(lambda tcp: self._accept(tcp, context), listeners)
        finally:
            self._refusals.flush()

    async def _accept(self, tcp: trio.SocketStream, context: ssl.SSLContext) -> None:
        address = _address_of(tcp)
        if self._pending_handshakes >= self.settings.max_pending_handshakes:
            self._refusals.log(logging.WARNING, "peer-handshakes-pending",
                               "link %s: refusing connection from %s: %d handshakes already pending",
                               self.settings.link_id, address, self._pending_handshakes)
            await trio.aclose_forcefully(tcp)
            return
        self._pending_handshakes += 1
        try:
            cap_retransmission_timeout(tcp.socket)
            session = await self._open_session(_ready(trio.SSLStream(tcp, context, server_side=True)),
                                               Role.RESPONDER, address)
        except (OSError, PeerError) as exc:
            self._refusals.log(logging.WARNING, "peer-refused", "link %s: refused connection from %s: %s",
                               self.settings.link_id, address, _describe(exc))
            await trio.aclose_forcefully(tcp)
            return
        finally:
            self._pending_handshakes -= 1
        await self._serve(session)

    # -- both ends ----------------------------------------------------------------------------------
    async def _serve(self, session: PeerSession) -> None:
        """Make `session` the live one (replacing any other), run it and the handler until it ends."""
        done = trio.Event()
        async with self._install_lock:
            if self._live is not None:
                log.info("link %s: session %s replaces session %s", self.settings.link_id, session.session_id,
                         self._live.session_id)
                if trio.current_time() - self._live.last_received_s > self.settings.heartbeat_interval_s:
                    # silent past its heartbeat: its connection is stalled and a CLOSE record would only wait
                    self._live.abandon("the peer is silent on it and a new session replaces it")
                await self._live.aclose()
                await self._live_done.wait()
            self.epoch += 1
            session.epoch = self.epoch
            self._live, self._live_done = session, done
            self._session_changed.set()
            self._session_changed = trio.Event()
        try:
            handler_done = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._drive, session, nursery.cancel_scope, handler_done)
                nursery.start_soon(self._handle, session, handler_done)
        finally:
            if self._live is session:
                self._live = None
            with trio.CancelScope(shield=True):
                await session.aclose()  # no-op on a session already torn down
            done.set()

    async def _drive(self, session: PeerSession, scope: trio.CancelScope, handler_done: trio.Event) -> None:
        """Run the session; when it ends, end the handler too (and log why)."""
        try:
            # on_session, started beside this task, runs up to its first checkpoint before the session
            # reads a record: it may route the session (PeerSession.route_all) there.
            await trio.lowlevel.checkpoint()
            await session.run()
        except PeerError as exc:
            log.warning("link %s: session %s with %s torn down: %s", self.settings.link_id, session.session_id,
                        session.peer_address, _describe(exc))
        else:
            # A clean close: the handler may still take what the peer sent before its CLOSE record
            # (receive() then raises SessionClosedError and a receiving handler returns).
            with trio.move_on_after(DRAIN_AFTER_CLOSE_S):
                await handler_done.wait()
        finally:
            scope.cancel()

    async def _handle(self, session: PeerSession, handler_done: trio.Event) -> None:
        try:
            await self._on_session(session)
        except SessionClosedError:
            return
        else:
            await session.aclose()
        finally:
            handler_done.set()


def _ready(stream: trio.abc.Stream):
    async def connect() -> trio.abc.Stream:
        return stream
    return connect


# How a host that took the TCP connection ends it when nothing behind it handshakes (PeerResetError)
_RESETS = (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError)


def _refused(exc: BaseException) -> bool:
    """Whether a failed dial was refused or reset by the peer's host (trio groups the attempts' errors as the
    cause of a refused connect)."""
    if isinstance(exc, (ConnectionRefusedError, PeerResetError)):
        return True
    attempts = getattr(exc.__cause__, "exceptions", None)
    return bool(attempts) and all(isinstance(attempt, ConnectionRefusedError) for attempt in attempts)


def _address_of(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"


def _describe(exc: BaseException) -> str:
    """One line naming the failure; exceptions here never carry key material."""
    if isinstance(exc, PeerError):
        return str(exc)
    if _refused(exc):
        return "connection refused (nothing listens at the peer's address yet)"
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        text += f" ({type(exc.__cause__).__name__}: {exc.__cause__})"
    return text

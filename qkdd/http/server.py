"""One HTTP listener: binds, accepts, enforces the connection limits, and drains on shutdown.

`HTTPServer.run()` lives in the caller's nursery; each accepted connection is a task in the server's
own nursery (connection.py serves it). Whether a newcomer gets a slot, and whose idle unauthenticated
slot it may take, is the slot table's decision (slots.py); the bodies all connections hold share one
budget (budget.py). `shutdown()` closes the listening socket at once, closes idle connections, lets
requests in progress finish within `limits.shutdown_grace_s`, then cancels the rest.
"""
from __future__ import annotations

import errno
import logging
import ssl

import trio

from qkdd.log_limit import RateLimitedLog

from . import errors
from .access_log import AccessLog
from .budget import BodyBudget
from .connection import HTTPConnection, ListenerContext, discard_input
from .messages import HTTPLimits, TLSSettings
from .reclaim import Reclaimer
from .router import Router
from .slots import SlotTable, source_of
from .tls import server_context

REFUSE_RETRY_AFTER_S = 1
REFUSE_LINGER_S = 2.0          # a refused client gets this long to send its request and read the 503 (a
                               # loaded host may take a second between connect and send)...
REFUSE_LINGER_BYTES = 64 * 1024
REFUSE_MAX_PENDING = 256       # ...unless this many refusals are pending already: then just close
# accept() errors that mean "out of resources, try again shortly" rather than "listener broken".
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class HTTPServer:
    """An HTTP/1.1 listener on (host, port) serving `router`, over TLS when `tls` is given."""

    def __init__(self, name: str, host: str, port: int, router: Router, *, tls: TLSSettings | None = None,
                 limits: HTTPLimits = HTTPLimits(), logger: logging.Logger | None = None,
                 ssl_context: ssl.SSLContext | None = None):
        self.name = name
        self.host = host
        self.port = port
        self.limits = limits
        self._log = logger or logging.getLogger("qkdd.http")
        # Built here so bad certificate files fail at start-up, not at the first client.
        # (`ssl_context`: a context prepared elsewhere instead of `tls`, such as SKIP's TLS-PSK one)
        ssl_context = server_context(tls) if tls else ssl_context
        verifies_clients = tls is not None and tls.client_cert != "none"
        self._context = ListenerContext(name, router, limits, self._log, ssl_context, RateLimitedLog(self._log),
                                        AccessLog(self._log, name), BodyBudget(limits.max_buffered_body_bytes),
                                        SlotTable(limits, verifies_clients), Reclaimer())
        self._listeners: list[trio.SocketListener] = []
        self._connections: set[HTTPConnection] = set()
        self._accept_scope: trio.CancelScope | None = None
        self._shutdown_requested = False
        self._refusing = 0

    @property
    def uses_tls(self) -> bool:
        return self._context.ssl_context is not None

    @property
    def connection_count(self) -> int:
        """Connections being served now (refused ones are not counted)."""
        return len(self._connections)

    @property
    def body_budget(self) -> BodyBudget:
        return self._context.budget

    @property
    def slots(self) -> SlotTable:
        return self._context.slots

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until shutdown() completes or the caller cancels; reports (host, port) when bound."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        if self.port == 0 and len(listeners) > 1:
            # Each address would get its own ephemeral port; serve the first so the port is unambiguous.
            for extra in listeners[1:]:
                await extra.aclose()
            listeners = listeners[:1]
        self._listeners = listeners
        bound_port = listeners[0].socket.getsockname()[1]
        self._log.info("%s listening on %s:%d (%s)", self.name, self.host, bound_port,
                       "TLS" if self._context.ssl_context else "plain HTTP")
        task_status.started((self.host, bound_port))
        try:
            async with trio.open_nursery() as connections:
                with trio.CancelScope() as accept_scope:
                    self._accept_scope = accept_scope
                    if self._shutdown_requested:
                        accept_scope.cancel()
                    async with trio.open_nursery() as acceptors:
                        acceptors.start_soon(self._context.refusals.run)    # summaries of held-back lines
                        acceptors.start_soon(self._context.access_log.run)
                        acceptors.start_soon(self._context.reclaimer.run)
                        for listener in listeners:
                            acceptors.start_soon(self._accept_loop, listener, connections)
                # Shutting down: idle connections close now, busy ones get the grace period.
                self._close_listeners()
                for connection in list(self._connections):
                    connection.begin_shutdown()
                connections.cancel_scope.deadline = trio.current_time() + self.limits.shutdown_grace_s
        finally:
            self._close_listeners()
            self._context.refusals.flush()
            self._context.access_log.flush()
        self._log.info("%s stopped", self.name)

    def shutdown(self) -> None:
        """Stop accepting now and drain; run() returns once in-flight requests are done or the grace ends.

        Call from the trio thread running the server (from another thread: trio.from_thread.run_sync).
        """
        if self._shutdown_requested:
            return
        self._shutdown_requested = True
        self._close_listeners()
        # Mark connections now, so a response finishing in this same scheduler step already says
        # `Connection: close`.
        for connection in list(self._connections):
            connection.begin_shutdown()
        if self._accept_scope is not None:
            self._accept_scope.cancel()

    def _close_listeners(self) -> None:
        for listener in self._listeners:
            listener.socket.close()

    async def _accept_loop(self, listener: trio.SocketListener, connections: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                return
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRNOS:
                    raise
                self._log.warning("%s cannot accept: %s", self.name, exc.strerror)
                await trio.sleep(0.1)
                continue
            client = _peer_address(stream)
            admission = self._context.slots.admit(client, trio.current_time())
            if admission.slot is None:
                await self._refuse(stream, connections, client, admission.refusal)
                continue
            displaced = admission.displaced
            if isinstance(displaced, HTTPConnection):
                self._context.refusals.log(logging.INFO, "connection-displaced",
                                           "%s closed an idle unauthenticated connection from %s to admit one "
                                           "from %s", self.name, displaced.client_text, _text(client))
                displaced.displace()
            connection = HTTPConnection(stream, client, self._context, admission.slot)
            admission.slot.owner = connection
            self._connections.add(connection)
            connections.start_soon(self._serve, connection)

    async def _serve(self, connection: HTTPConnection) -> None:
        try:
            await connection.serve()
        finally:
            self._connections.discard(connection)

    @property
    def refusals_pending(self) -> int:
        """Refused connections still being sent their 503."""
        return self._refusing

    async def _refuse(self, stream: trio.SocketStream, connections: trio.Nursery, client: tuple[str, int] | None,
                      refusal: str) -> None:
        """Turn away a connection over a limit without serving it: 503 on plain HTTP, close on TLS."""
        slots = self._context.slots
        if refusal == "source":
            self._context.refusals.log(logging.WARNING, "connection-limit-source",
                                       "%s refused a connection from %s: %d open from that source, "
                                       "max_connections_per_source=%d", self.name, _text(client),
                                       slots.count_of(source_of(client)), self.limits.max_connections_per_source)
        else:
            self._context.refusals.log(logging.WARNING, "connection-limit",
                                       "%s refused a connection: %d open, max_connections=%d (%d unauthenticated, "
                                       "at most %d)", self.name, slots.total, self.limits.max_connections,
                                       slots.unauthenticated, slots.max_unauthenticated)
        if self._context.ssl_context is not None or self._refusing >= REFUSE_MAX_PENDING:
            await trio.aclose_forcefully(stream)
            return
        self._refusing += 1
        connections.start_soon(self._send_refusal, stream)

    async def _send_refusal(self, stream: trio.SocketStream) -> None:
        """Send the 503, then drop (briefly) whatever the client sent, so it reads the 503 rather than a reset."""
        response = errors.too_many_connections(REFUSE_RETRY_AFTER_S).to_response()
        head = (f"HTTP/1.1 {response.status} Service Unavailable\r\n"
                f"Server: qkdd\r\nContent-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\nCache-Control: no-store\r\n"
                + "".join(f"{name}: {value}\r\n" for name, value in response.headers)
                + "Connection: close\r\n\r\n").encode("ascii")
        try:
            with trio.move_on_after(REFUSE_LINGER_S):
                await stream.send_all(head + response.body)
                await stream.send_eof()
                await discard_input(stream, REFUSE_LINGER_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._refusing -= 1
            await trio.aclose_forcefully(stream)


def _text(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "-"


def _peer_address(stream: trio.SocketStream) -> tuple[str, int] | None:
    try:
        address = stream.socket.getpeername()
    except OSError:
        return None
    return (address[0], address[1])

"""One client connection: TLS handshake, then HTTP/1.1 requests parsed by h11 under the listener's limits,
dispatched through the router, answered and logged.

A connection is a loop of exchanges. Each exchange waits for a request head (keep-alive idle timeout for
the first byte, then `header_timeout_s` for the whole head). The head alone then decides whether the
request is served: the route must exist and allow the method, the route's access check must let the
caller (peer address, client certificate) through, the declared length must fit `max_body_bytes`, and
the listener's body budget (budget.py) must have room for it. Only then is the body read
(`body_timeout_s`), the handler run (`handler_timeout_s`) and the response sent. A request refused on
its head is answered at once; if it announced a body, the connection closes after the answer, and what
the client still sends is read and dropped in small pieces for a moment (never kept) so that it sees
the answer rather than a reset. Any error that leaves the request stream in an unknown state ends the
connection after the error response; timeouts with nothing received end it silently.

Until it shows a verified client certificate a connection is unauthenticated: it gets
`unauthenticated_idle_s` rather than the keep-alive timeout to send its next request, and its slot may
be handed to a newcomer while it idles (slots.py).
"""
from __future__ import annotations

import logging
import secrets
import ssl
import time
from dataclasses import dataclass
from urllib.parse import parse_qs

import h11
import trio

from qkdd.log_limit import RateLimitedLog

from . import errors
from .access_log import AccessLog
from .budget import BodyBudget
from .messages import Access, Caller, Handler, HTTPError, HTTPLimits, PeerCertificate, Request, Response
from .reclaim import Reclaimer
from .response_head import response_body, response_head
from .router import Router, decode_path
from .slots import Slot, SlotTable
from .tls import handshake_failure_reason, peer_certificate

RECEIVE_BYTES = 16 * 1024
RETRY_AFTER_S = 5             # advertised after a handler timeout
RETRY_AFTER_BUSY_S = 1        # advertised when the listener has no room for another request body
LINGER_S = 1.0                # after an error response, read and drop input this long before closing...
LINGER_BYTES = 256 * 1024     # ...or this many bytes, so the client sees the response rather than a reset
MAX_QUERY_FIELDS = 100
CLOSE_S = 1.0                 # time allowed for a TLS close_notify when closing


@dataclass(frozen=True)
class ListenerContext:
    """What every connection of one listener shares."""

    name: str
    router: Router
    limits: HTTPLimits
    logger: logging.Logger
    ssl_context: ssl.SSLContext | None     # None for plain HTTP
    refusals: RateLimitedLog               # failed TLS handshakes: any client can cause them at will
    access_log: AccessLog                  # a line per exchange, written in the loop's idle moments
    budget: BodyBudget                     # room for request bodies, shared by the listener's connections
    slots: SlotTable                       # who holds the listener's connection slots
    reclaimer: Reclaimer                   # gives memory back after a burst of connections


class _CloseQuietly(Exception):
    """The connection is over and there is nothing left to tell the client."""


@dataclass
class _Exchange:
    """The request being served, for the response headers and the log line."""

    request_id: str
    started_s: float
    method: str = "-"
    raw_path: str = "-"
    reserved_bytes: int = 0       # of the listener's body budget, given back when the exchange ends


class HTTPConnection:
    """Serves one accepted stream until the client leaves, a limit ends it, or the server drains."""

    def __init__(self, stream: trio.abc.Stream, client: tuple[str, int] | None, context: ListenerContext,
                 slot: Slot):
        self._stream = stream
        self._client = client
        self._slot = slot
        self._context = context
        self._limits = context.limits
        self._log = context.logger
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=context.limits.max_header_bytes)
        self._peer_cert: PeerCertificate | None = None
        self._requests_served = 0
        self._draining = False
        self._idle = False
        self._idle_scope: trio.CancelScope | None = None
        self._scope = trio.CancelScope()

    @property
    def client_text(self) -> str:
        return f"{self._client[0]}:{self._client[1]}" if self._client else "-"

    @property
    def authenticated(self) -> bool:
        """The client showed a verified certificate."""
        return self._peer_cert is not None

    def displace(self) -> None:
        """Close now: a newcomer took this idle unauthenticated connection's slot (slots.py)."""
        self._scope.cancel()

    def begin_shutdown(self) -> None:
        """Finish the request in progress (answered with `Connection: close`); close at once when idle."""
        self._draining = True
        if self._idle and self._idle_scope is not None:
            self._idle_scope.cancel()

    async def serve(self) -> None:
        try:
            with self._scope:
                if self._context.ssl_context is not None and not await self._handshake():
                    return
                while await self._serve_exchange():
                    pass
        except _CloseQuietly:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._log.debug("%s connection from %s lost: %s", self._context.name, self.client_text,
                            handshake_failure_reason(exc))
        except Exception:
            self._log.exception("%s connection from %s failed", self._context.name, self.client_text)
        finally:
            self._context.slots.release(self._slot)
            await self._close()
            self._context.reclaimer.connection_closed()

    async def _close(self) -> None:
        # Shielded so a connection cancelled at the end of the shutdown grace still closes cleanly.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_S):
            try:
                await self._stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    # -- TLS -------------------------------------------------------------------------------------

    async def _handshake(self) -> bool:
        ssl_stream = trio.SSLStream(self._stream, self._context.ssl_context, server_side=True,
                                    https_compatible=True)
        self._idle = True
        try:
            with trio.move_on_after(self._limits.tls_handshake_timeout_s) as scope:
                self._idle_scope = scope
                if self._draining:
                    scope.cancel()
                await ssl_stream.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._context.refusals.log(logging.INFO, "tls-handshake-failed", "%s TLS handshake from %s failed: %s",
                                       self._context.name, self.client_text, handshake_failure_reason(exc))
            await self._send_pending_alert(ssl_stream)
            return False
        finally:
            self._idle = False
            self._idle_scope = None
        if scope.cancelled_caught:
            if not self._draining:
                self._context.refusals.log(logging.INFO, "tls-handshake-timeout", "%s TLS handshake from %s timed out",
                                           self._context.name, self.client_text)
            return False
        self._stream = ssl_stream
        try:
            self._peer_cert = peer_certificate(ssl_stream)
        except ValueError as exc:
            # OpenSSL accepted it but it is not well-formed X.509: do not serve an identity we cannot read.
            self._context.refusals.log(logging.WARNING, "client-certificate-unreadable",
                                       "%s client certificate from %s is unreadable: %s", self._context.name,
                                       self.client_text, type(exc).__name__)
            return False
        if self._peer_cert is not None:
            self._context.slots.authenticate(self._slot)
        return True

    async def _send_pending_alert(self, ssl_stream: trio.SSLStream) -> None:
        """Send the TLS alert OpenSSL wrote for a failed handshake (CERTIFICATE_REQUIRED, UNKNOWN_CA...).

        trio.SSLStream marks itself broken on an SSLError without flushing its outgoing buffer, so the
        client would otherwise see end-of-stream instead of the reason. The buffer is a private attribute
        of trio (0.35); if it moves, the client just sees end-of-stream as before.
        """
        outgoing = getattr(ssl_stream, "_outgoing", None)
        if not isinstance(outgoing, ssl.MemoryBIO) or not outgoing.pending:
            return
        alert_bytes = outgoing.read()
        with trio.move_on_after(CLOSE_S):
            try:
                await self._stream.send_all(alert_bytes)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    # -- one request/response exchange ------------------------------------------------------------

    async def _serve_exchange(self) -> bool:
        """Serve one request; True when the connection stays open for the next one."""
        exchange = _Exchange(request_id=secrets.token_hex(8), started_s=time.perf_counter())
        try:
            try:
                request, handler = await self._receive_request(exchange)
                response = await self._dispatch(request, handler)
            except HTTPError as error:
                response = error.to_response()
            await self._send_response(exchange, response)
        finally:
            self._slot.busy = False
            self._context.budget.release(exchange.reserved_bytes)
            exchange.reserved_bytes = 0
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            return True
        if self._h11.their_state not in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED):
            await self._linger()
        return False

    async def _receive_request(self, exchange: _Exchange) -> tuple[Request, Handler]:
        event = await self._receive_head()
        self._slot.busy = True
        exchange.started_s = time.perf_counter()
        exchange.method = event.method.decode("ascii")
        target = event.target.decode("ascii")
        exchange.raw_path = target.split("?", 1)[0]
        headers = self._check_head(event)
        raw_path, _, query_text = target.partition("?")
        try:
            # Everything the head decides, before a byte of the body is read.
            route = self._context.router.resolve_route(exchange.method, raw_path)
            self._check_access(route.access, exchange)
            exchange.reserved_bytes = await self._reserve_body(headers)
        except HTTPError:
            if not _announces_body(headers):
                self._end_empty_body()           # nothing to read: the connection may stay open
            raise
        body = await self._receive_body(headers, exchange)
        try:
            query = parse_qs(query_text, keep_blank_values=True, errors="strict",
                             max_num_fields=MAX_QUERY_FIELDS)
        except (UnicodeDecodeError, ValueError):
            raise errors.bad_query() from None
        request = Request(method=exchange.method, path=decode_path(raw_path), query=query, headers=headers,
                          body=body, request_id=exchange.request_id, client=self._client,
                          peer_cert=self._peer_cert, raw_path=raw_path, path_params=route.params)
        return request, route.handler

    async def _receive_head(self) -> h11.Request:
        first_request = self._requests_served == 0
        idle_timeout_s = self._limits.header_timeout_s if first_request else self._limits.keepalive_timeout_s
        if not self.authenticated:
            idle_timeout_s = min(idle_timeout_s, self._limits.unauthenticated_idle_s)
        waited_s = await self._wait_for_first_byte(idle_timeout_s)
        remaining_s = self._limits.header_timeout_s - (waited_s if first_request else 0.0)
        with trio.move_on_after(max(remaining_s, 0.0)) as scope:
            event = await self._next_event()
        if scope.cancelled_caught:
            raise errors.request_timeout("request head")
        if isinstance(event, h11.ConnectionClosed):
            raise _CloseQuietly()
        assert isinstance(event, h11.Request), event
        return event

    async def _wait_for_first_byte(self, timeout_s: float) -> float:
        """Wait while the connection is idle (nothing of the next request received); seconds waited."""
        started = trio.current_time()
        if self._h11.trailing_data[0] or self._h11.trailing_data[1]:
            return 0.0
        self._idle = True
        try:
            with trio.move_on_after(timeout_s) as scope:
                self._idle_scope = scope
                if self._draining:
                    scope.cancel()
                data = await self._stream.receive_some(RECEIVE_BYTES)
        finally:
            self._idle = False
            self._idle_scope = None
        if scope.cancelled_caught or not data:
            raise _CloseQuietly()     # idle timeout, shutdown, or the client left between requests
        self._h11.receive_data(data)
        return trio.current_time() - started

    async def _next_event(self) -> object:
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise errors.protocol_error(exc) from None
            if event is not h11.NEED_DATA:
                return event
            self._h11.receive_data(await self._stream.receive_some(RECEIVE_BYTES))

    def _check_head(self, event: h11.Request) -> list[tuple[str, str]]:
        """Header size, encoding and framing checks h11 leaves to us; the decoded header list."""
        head_bytes = len(event.method) + len(event.target) + 12
        headers = []
        for name, value in event.headers:
            head_bytes += len(name) + len(value) + 4
            try:
                headers.append((name.decode("ascii"), value.decode("utf-8")))
            except UnicodeDecodeError:
                raise HTTPError(400, "malformed HTTP request",
                                [{"headers": f"header {name.decode('ascii')} is not valid UTF-8"}]) from None
        if head_bytes > self._limits.max_header_bytes:
            raise errors.header_too_large(self._limits.max_header_bytes)
        names = {name for name, _ in headers}
        if "content-length" in names and "transfer-encoding" in names:
            raise errors.ambiguous_framing()
        return headers

    def _check_access(self, access: Access, exchange: _Exchange) -> None:
        """The route's access check on this caller: returns, or raises the HTTPError that refuses it."""
        try:
            access(Caller(self._client, self._peer_cert))
        except HTTPError:
            raise
        except Exception:
            self._log.exception("%s access check for %s %s failed (request id %s)", self._context.name,
                                exchange.method, exchange.raw_path, exchange.request_id)
            raise errors.internal_error() from None

    async def _reserve_body(self, headers: list[tuple[str, str]]) -> int:
        """Check the declared length and take room for it in the listener's body budget; bytes taken.
        A chunked body takes its room chunk by chunk as it arrives (_receive_body)."""
        length = _content_length(headers)
        if length is None:
            return 0
        if length > self._limits.max_body_bytes:
            raise errors.body_too_large(self._limits.max_body_bytes)
        if not await self._context.budget.reserve(length, self._limits.body_wait_s):
            raise self._budget_exhausted()
        return length

    def _budget_exhausted(self) -> HTTPError:
        self._context.refusals.log(logging.WARNING, "body-budget", "%s has no room for another request body: %d "
                                   "bytes held, max_buffered_body_bytes=%d", self._context.name,
                                   self._context.budget.in_use_bytes, self._limits.max_buffered_body_bytes)
        return errors.server_busy(RETRY_AFTER_BUSY_S)

    def _end_empty_body(self) -> None:
        """Take h11's end of a request that announced no body (no I/O), so the connection can be reused."""
        try:
            self._h11.next_event()
        except h11.RemoteProtocolError:
            pass

    async def _receive_body(self, headers: list[tuple[str, str]], exchange: _Exchange) -> bytes:
        limit = self._limits.max_body_bytes
        chunked = _content_length(headers) is None
        if self._h11.they_are_waiting_for_100_continue:
            await self._send_bytes(self._h11.send(h11.InformationalResponse(status_code=100, headers=[])))
        chunks = []
        received_bytes = 0
        with trio.move_on_after(self._limits.body_timeout_s) as scope:
            while True:
                event = await self._next_event()
                if isinstance(event, h11.Data):
                    received_bytes += len(event.data)
                    if received_bytes > limit:
                        raise errors.body_too_large(limit)
                    if chunked:
                        if not await self._context.budget.reserve(len(event.data), self._limits.body_wait_s):
                            raise self._budget_exhausted()
                        exchange.reserved_bytes += len(event.data)
                    chunks.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise _CloseQuietly()
        if scope.cancelled_caught:
            raise errors.request_timeout("request body")
        return b"".join(chunks)

    async def _dispatch(self, request: Request, handler: Handler) -> Response:
        try:
            with trio.move_on_after(self._limits.handler_timeout_s) as scope:
                response = await handler(request)
        except HTTPError:
            raise
        except Exception as exc:
            client_error = _only_http_error(exc)
            if client_error is not None:
                raise client_error from None
            # The traceback stays in the server log; the client learns nothing about internals.
            self._log.exception("%s handler for %s %s failed (request id %s)", self._context.name,
                                request.method, request.raw_path, request.request_id)
            raise errors.internal_error() from None
        if scope.cancelled_caught:
            self._log.warning("%s handler for %s %s exceeded %.1f s (request id %s)", self._context.name,
                              request.method, request.raw_path, self._limits.handler_timeout_s,
                              request.request_id)
            raise errors.handler_timeout(RETRY_AFTER_S)
        if not isinstance(response, Response) or not isinstance(response.body, bytes):
            self._log.error("%s handler for %s %s returned %s, not a Response with a bytes body",
                            self._context.name, request.method, request.raw_path, type(response).__name__)
            raise errors.internal_error()
        return response

    # -- sending ----------------------------------------------------------------------------------

    async def _send_response(self, exchange: _Exchange, response: Response) -> None:
        if self._h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            raise _CloseQuietly()
        self._requests_served += 1
        try:
            head = self._response_head(exchange, response)
        except (h11.LocalProtocolError, TypeError, ValueError):
            # A handler's status or header cannot go on the wire (a newline in a value, say).
            self._log.error("%s handler for %s %s returned an invalid status or header (request id %s)",
                            self._context.name, exchange.method, exchange.raw_path, exchange.request_id)
            response = errors.internal_error().to_response()
            head = self._response_head(exchange, response)
        body = response_body(response)
        data = self._h11.send(head)
        if exchange.method != "HEAD" and body:
            data += self._h11.send(h11.Data(data=body))
        data += self._h11.send(h11.EndOfMessage())
        try:
            await self._send_bytes(data)
        finally:
            self._log_exchange(exchange, response.status)

    def _response_head(self, exchange: _Exchange, response: Response) -> h11.Response:
        client_done = self._h11.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)
        close = (self._draining or not client_done
                 or self._requests_served >= self._limits.max_requests_per_connection)
        return response_head(response, exchange.request_id, close)

    async def _send_bytes(self, data: bytes) -> None:
        with trio.move_on_after(self._limits.send_timeout_s) as scope:
            await self._stream.send_all(data)
        if scope.cancelled_caught:
            raise _CloseQuietly()

    async def _linger(self) -> None:
        """Read and drop what the client is still sending, briefly, so it can read our response."""
        with trio.move_on_after(LINGER_S):
            try:
                await discard_input(self._stream, LINGER_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def _log_exchange(self, exchange: _Exchange, status: int) -> None:
        self._context.access_log.note(exchange.request_id, exchange.method, exchange.raw_path, status,
                                      (time.perf_counter() - exchange.started_s) * 1000.0, self.client_text)


async def discard_input(stream: trio.abc.ReceiveStream, max_bytes: int) -> None:
    """Read and drop what the client is still sending, until it stops or `max_bytes` went by."""
    dropped_bytes = 0
    while dropped_bytes < max_bytes:
        data = await stream.receive_some(RECEIVE_BYTES)
        if not data:
            return
        dropped_bytes += len(data)


def _content_length(headers: list[tuple[str, str]]) -> int | None:
    """The declared Content-Length (h11 checked it is one well-formed value), or None for a chunked body."""
    for name, value in headers:
        if name == "content-length":
            return int(value)
    return None if any(name == "transfer-encoding" for name, _ in headers) else 0


def _announces_body(headers: list[tuple[str, str]]) -> bool:
    return _content_length(headers) != 0


def _only_http_error(exc: Exception) -> HTTPError | None:
    """The HTTPError a handler raised from inside a nursery (an ExceptionGroup of nothing but HTTPErrors)."""
    if not isinstance(exc, ExceptionGroup):
        return None
    leaves: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        else:
            leaves.append(current)
    if leaves and all(isinstance(leaf, HTTPError) for leaf in leaves):
        return leaves[-1]
    return None

"""Fuzz target: the bytes a client sends on the API listener, served by the real connection code (h11, our
head checks, query parsing, router, JSON bodies) on a scripted stream under trio's mock clock.

The router holds routes of the API's shapes whose handlers run the real request parsers (ETSI 014 Key
request and Key IDs, SAE ids from the path, /v1 query numbers, JSON bodies). Expected: every request is
answered with a response a client can parse, 4xx for bad input. A finding: an exception the connection
had to log (a 500), a response h11 cannot parse, or an error that quotes the query string or a header
value back (they may hold credentials).
"""
from __future__ import annotations

import logging
import queue
import re
import threading

import h11
import trio
import trio.testing

from tests.fuzz._common import Finding, check_silent, fuzz, instrumented

with instrumented("h11"):
    from qkdd.api.etsi014 import _answering_refusals
    from qkdd.api.keys import _number as query_number
    from qkdd.api.sim_control import _body as json_object_body
    from qkdd.http.access_log import AccessLog
    from qkdd.http.budget import BodyBudget
    from qkdd.http.connection import RECEIVE_BYTES, HTTPConnection, ListenerContext
    from qkdd.http.reclaim import Reclaimer
    from qkdd.http.slots import SlotTable
    from qkdd.http.messages import HTTPLimits, Request, Response
    from qkdd.http.router import Router
    from qkdd.kme.config import Etsi014Config
    from qkdd.kme.identity import check_path_sae_id
    from qkdd.kme.key_request import parse_key_ids, parse_key_request
    from qkdd.log_limit import RateLimitedLog

ETSI_PREFIX = "/api/v1/keys"
KME_CONFIG = Etsi014Config(kme_id="kme-a")
LIMITS = HTTPLimits(max_header_bytes=4096, max_body_bytes=2048)


class _Findings(logging.Handler):
    """Error records of the connection: a handler or the server itself failed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage() + (f" ({record.exc_info[1]!r})" if record.exc_info else ""))


_FINDINGS = _Findings()
_LOG = logging.getLogger("qkdd.fuzz.http")
_LOG.propagate = False
_LOG.setLevel(logging.WARNING)          # access-log lines (INFO) are not noted
_LOG.addHandler(_FINDINGS)


def _router() -> Router:
    router = Router()

    async def healthz(request: Request) -> Response:
        return Response.json({"status": "ok"})

    async def qber(request: Request) -> Response:
        return Response.json({"link_id": request.path_params["link_id"],
                              "window_s": query_number(request, "window_s", 60.0)})

    async def attack(request: Request) -> Response:
        return Response.json(json_object_body(request, {"kind", "fraction"}))

    async def enc_keys(request: Request) -> Response:
        check_path_sae_id(request.path_params["slave_SAE_ID"], "slave_SAE_ID")
        key_request, _ = parse_key_request(request, KME_CONFIG)
        return Response.json({"number": key_request.number, "size": key_request.size_bits})

    async def dec_keys(request: Request) -> Response:
        check_path_sae_id(request.path_params["master_SAE_ID"], "master_SAE_ID")
        return Response.json({"key_IDs": parse_key_ids(request, KME_CONFIG)})

    router.route("GET", "/healthz", healthz)
    router.route("GET", "/v1/links/{link_id}/qber", qber)
    router.route("POST", "/v1/links/{link_id}/sim/attack", attack)
    for method in ("GET", "POST"):
        # the KME's refusals answered as the ETSI 014 routes answer them (qkdd.api.etsi014)
        router.route(method, ETSI_PREFIX + "/{slave_SAE_ID}/enc_keys", _answering_refusals(enc_keys),
                     empty_params=True, head=False)
        router.route(method, ETSI_PREFIX + "/{master_SAE_ID}/dec_keys", _answering_refusals(dec_keys),
                     empty_params=True, head=False)
    return router


ROUTER = _router()
# Under libFuzzer the inputs are served by one trio loop (mock clock) in a thread of its own: starting a
# loop per input would cost more than most inputs do.
_LOOP: trio.lowlevel.TrioToken | None = None


class _ClientStream(trio.abc.Stream):
    """The client's bytes in pieces of `piece_bytes`, then end of stream; what the server sends is kept."""

    def __init__(self, data: bytes, piece_bytes: int) -> None:
        self._data = data
        self._at = 0
        self._piece_bytes = piece_bytes
        self.sent = bytearray()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        count = min(max_bytes or RECEIVE_BYTES, self._piece_bytes)
        piece = self._data[self._at:self._at + count]
        self._at += len(piece)
        return piece

    async def send_all(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.sent += data

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class _Exchanges(AccessLog):
    """The access log's view of each exchange: (method, status) in order, for reading the responses back."""

    def __init__(self) -> None:
        super().__init__(_LOG, "api")
        self.seen: list[tuple[str, int]] = []

    def note(self, request_id: str, method: str, path: str, status: int, duration_ms: float, client: str) -> None:
        self.seen.append((method, status))


async def _serve(stream: _ClientStream, exchanges: _Exchanges) -> None:
    """One connection as the listener serves it: its own body budget, slot table and reclaimer (as a
    listener has), so one input's leftovers cannot reach the next."""
    slots = SlotTable(LIMITS, verifies_clients=False)
    client = ("192.0.2.1", 40000)
    context = ListenerContext("api", ROUTER, LIMITS, _LOG, None, RateLimitedLog(_LOG), exchanges,
                              BodyBudget(LIMITS.max_buffered_body_bytes), slots, Reclaimer())
    admission = slots.admit(client, trio.current_time())
    connection = HTTPConnection(stream, client, context, admission.slot)
    admission.slot.owner = connection
    await connection.serve()


def _responses(sent: bytes, methods: list[str]) -> list[tuple[int, bytes]]:
    """(status, body) of every response the server sent, read as a client that sent `methods` reads them."""
    client = h11.Connection(h11.CLIENT)
    if sent:
        client.receive_data(bytes(sent))          # (b"" would mean end of stream)
    ended = False
    responses: list[tuple[int, bytes]] = []
    status, body = 0, bytearray()
    while True:
        if client.our_state is h11.IDLE:      # h11 reads a response only after a request went out
            method = "HEAD" if len(responses) < len(methods) and methods[len(responses)] == "HEAD" else "GET"
            client.send(h11.Request(method=method, target="/", headers=[("Host", "qkdd")]))
            client.send(h11.EndOfMessage())
        if ended and not client.trailing_data[0] and client.their_state is h11.SEND_RESPONSE:
            return responses                    # closed between responses: nothing more was sent
        event = client.next_event()
        if isinstance(event, h11.InformationalResponse):
            continue
        if isinstance(event, h11.Response):
            status, body = event.status_code, bytearray()
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            responses.append((status, bytes(body)))
            if client.our_state is h11.MUST_CLOSE or client.their_state is h11.MUST_CLOSE:
                return responses
            client.start_next_cycle()
        elif event is h11.NEED_DATA and not ended:
            client.receive_data(b"")
            ended = True
        else:
            return responses


_CREDENTIAL_HEADER_RE = re.compile(r"authorization|cookie|token|secret|api-key", re.IGNORECASE)
# Errors the server itself makes (qkdd.http.errors, router): their details never quote request bytes back.
# (A handler's details may name the parameter it refuses, as ETSI 014 §6.5 has them do.)
_SERVER_MESSAGES = ('"malformed HTTP request"', '"request header fields too large"', '"unsupported transfer coding"',
                    '"malformed query string"', '"malformed request path"', '"request body too large"',
                    '"request timeout"', '"not found"', '"method not allowed"', '"request body is not valid JSON"')


def _quotable(data: bytes, server_error: bool) -> list[str]:
    """What a response must not quote back: credential header values, and for the server's own errors also
    the query strings (long enough not to occur in the response by chance, and not also in a path)."""
    secrets = []
    paths = []
    for line in data.split(b"\r\n"):
        text = line.decode("latin-1")
        words = text.split(" ")
        if len(words) >= 3:                   # a request line (or what may be one): its path may be quoted
            path, _, query = words[1].partition("?")
            paths.append(path)
            if server_error and query:
                secrets.append(query)
        elif ":" in text and _CREDENTIAL_HEADER_RE.search(text.split(":", 1)[0]):
            secrets.append(text.split(":", 1)[1].strip())
    return [secret for secret in secrets if len(secret) >= 12 and not any(secret in path for path in paths)]


def TestOneInput(data: bytes) -> None:
    # One input in four arrives in small pieces, so heads and bodies are also parsed across reads.
    piece_bytes = 1 + len(data) % 61 if len(data) % 4 == 1 else RECEIVE_BYTES
    stream = _ClientStream(data, piece_bytes)
    exchanges = _Exchanges()
    _FINDINGS.messages.clear()
    if _LOOP is None:
        trio.run(_serve, stream, exchanges, clock=trio.testing.MockClock(autojump_threshold=0))
    else:
        trio.from_thread.run(_serve, stream, exchanges, trio_token=_LOOP)
    if _FINDINGS.messages:
        raise Finding(f"the connection logged an error: {_FINDINGS.messages[0]}")
    try:
        responses = _responses(stream.sent, [method for method, _ in exchanges.seen])
    except h11.RemoteProtocolError as exc:
        raise Finding(f"the server sent a response a client cannot parse: {exc}") from None
    if [status for status, _ in responses] != [status for _, status in exchanges.seen]:
        raise Finding(f"responses read {[status for status, _ in responses]}, exchanges {exchanges.seen}")
    for status, body in responses:
        if status >= 500 and status not in (501, 503):     # 501: unsupported transfer coding
            raise Finding(f"answered {status}: {body[:200]!r}")
        text = body.decode("utf-8", "replace")
        check_silent(text, _quotable(data, status >= 400 and text.startswith(_SERVER_MESSAGES, 11)),
                     f"the {status} response")


def seeds() -> list[bytes]:
    key_id = "7f2a1c3e-5b4d-4e6f-8a9b-0c1d2e3f4a5b"
    enc_body = b'{"number":2,"size":256,"additional_slave_SAE_IDs":["sae-c"]}'
    dec_body = b'{"key_IDs":[{"key_ID":"' + key_id.encode() + b'"}]}'

    def request(method: str, target: str, body: bytes = b"", headers: tuple[str, ...] = ()) -> bytes:
        head = [f"{method} {target} HTTP/1.1", "Host: kme-a.example"] + list(headers)
        if body:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body

    return [
        request("GET", "/healthz"),
        request("POST", f"{ETSI_PREFIX}/sae-b/enc_keys", enc_body, ("Authorization: Bearer abcdefghijklmnop",)),
        request("GET", f"{ETSI_PREFIX}/sae-b/enc_keys?number=2&size=512"),
        request("POST", f"{ETSI_PREFIX}/sae-a/dec_keys", dec_body),
        request("GET", f"{ETSI_PREFIX}/sae-a/dec_keys?key_ID={key_id}"),
        request("GET", "/v1/links/link-ab/qber?window_s=30.5") + request("GET", "/v1/links/l%2Dx/qber"),
        request("POST", "/v1/links/link-ab/sim/attack", b'{"kind":"intercept_resend","fraction":0.25}',
                ("Expect: 100-continue",)),
        (b"POST /api/v1/keys/sae-b/enc_keys HTTP/1.1\r\nHost: kme-a\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"9\r\n{\"number\"\r\n4\r\n:1}\n\r\n0\r\n\r\n"),
    ]


def _start_loop() -> trio.lowlevel.TrioToken:
    """A trio loop (mock clock) in a daemon thread, serving until the process ends; its token."""
    started: queue.Queue = queue.Queue()

    async def serve_forever() -> None:
        started.put(trio.lowlevel.current_trio_token())
        await trio.sleep_forever()

    threading.Thread(target=trio.run, args=(serve_forever,),
                     kwargs={"clock": trio.testing.MockClock(autojump_threshold=0)}, daemon=True).start()
    return started.get()


if __name__ == "__main__":
    _LOOP = _start_loop()
    fuzz(TestOneInput)

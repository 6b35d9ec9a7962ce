"""Two ends of a link for the ETSI 004 and SKIP tests and benchmarks, in one trio run: at each end a real key
store (SQLite file, seeded with identical keys under identical ids, end A allocating the even-numbered
ones and end B the odd ones; or, `reopen=True`, the files of an earlier run, as after a restart) with its
TTL deadlines table, the real reservation service over an in-memory session (the peer transport
has its own tests), and real TLS listeners on loopback reached by real TLS clients."""
from __future__ import annotations

import os
import ssl
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from qkdd.etsi004.chunks import StreamChunks
from qkdd.etsi004.deadlines import ChunkDeadlines
from qkdd.etsi004.server import Etsi004Server
from qkdd.etsi004.streams import Defaults
from qkdd.etsi004.wire import QoS, Request, decode_response, encode_request, Response, WireError
from qkdd.http.messages import TLSSettings
from qkdd.http.tls import server_context
from qkdd.keystore import KeyStore, create_kek, load_kek
from qkdd.pki import DevPKI, init_pki
from tests.reservation_support import memory_session, reservation_service

LINK_ID = "a-b"
KEY_BITS = 256
ROLES = {"a": "alice", "b": "bob"}


def seed(root: Path, count: int) -> dict[str, KeyStore]:
    keys = [(str(uuid.uuid4()), os.urandom(KEY_BITS // 8)) for _ in range(count)]
    stores = {}
    for end in ("a", "b"):
        kek = create_kek(str(root / f"kek-{end}"))
        store = KeyStore(str(root / f"keys-{end}.db"), kek)
        allocatable = [(index % 2 == 0) == (end == "a") for index in range(count)]
        store.put_pending(LINK_ID, 0, keys, expires_at=4e9, allocatable=allocatable)
        store.commit_frame(LINK_ID, 0)
        stores[end] = store
    return stores


def reopen_stores(root: Path) -> dict[str, KeyStore]:
    """Both ends' key stores of an earlier run, from their files."""
    return {end: KeyStore(str(root / f"keys-{end}.db"), load_kek(str(root / f"kek-{end}"))) for end in ("a", "b")}


def add_keys(stores: dict[str, KeyStore], count: int, *, allocatable_at: str = "a") -> None:
    """`count` more identical keys at both ends (a new frame), allocatable at end `allocatable_at` only."""
    keys = [(str(uuid.uuid4()), os.urandom(KEY_BITS // 8)) for _ in range(count)]
    frame_id = int.from_bytes(os.urandom(4), "big")
    for end, store in stores.items():
        store.put_pending(LINK_ID, frame_id, keys, expires_at=4e9, allocatable=[end == allocatable_at] * count)
        store.commit_frame(LINK_ID, frame_id)


def make_pki(root: Path) -> DevPKI:
    return init_pki(root / "pki", ["kme-a", "kme-b"], ["app-a", "app-b", "app-c"])


@dataclass
class End:
    name: str
    store: KeyStore
    reservations: object
    chunks: StreamChunks
    server: Etsi004Server | None = None
    address: tuple[str, int] | None = None
    skip_keys: object = None
    skip_address: tuple[str, int] | None = None


@asynccontextmanager
async def two_ends(root: Path, *, keys: int = 400, capacity_bps: float = 1e6, defaults: Defaults = Defaults(),
                   pki: DevPKI | None = None, etsi004: bool = True, extra=None, reopen: bool = False,
                   wall_clock=None):
    """Both ends linked and serving; yields {"a": End, "b": End}. `extra(ends, nursery)` may start more
    services (SKIP) before the yield. `wall_clock`: the chunks' clock for TTL deadlines (default time.time)."""
    stores = reopen_stores(root) if reopen else seed(root, keys)
    pki = pki or make_pki(root)              # (reopen: pass the first run's)
    ends = {}
    session_a, session_b = memory_session(64)
    async with trio.open_nursery() as nursery:
        for name, session in (("a", session_a), ("b", session_b)):
            service, serve = reservation_service(LINK_ID)
            chunks = StreamChunks(LINK_ID, ROLES[name], stores[name], service, key_bits=KEY_BITS,
                                  deadlines=ChunkDeadlines(stores[name].database))
            if wall_clock is not None:
                chunks.wall_clock = wall_clock
            end = ends[name] = End(name, stores[name], service, chunks)
            nursery.start_soon(serve, session)
            if etsi004:
                issued = pki.kmes[f"kme-{name}"]
                tls = server_context(TLSSettings(str(issued.cert_file), str(issued.key_file),
                                                 str(pki.ca_cert_file), "required"))
                end.server = Etsi004Server("127.0.0.1", 0, chunks, tls, capacity_bps=lambda: capacity_bps,
                                           defaults=defaults)
                end.address = await nursery.start(end.server.run)
        while not all(end.reservations.connected for end in ends.values()):
            await trio.sleep(0.01)
        if extra is not None:
            await extra(ends, nursery, pki)
        try:
            yield ends
        finally:
            nursery.cancel_scope.cancel()
            for store in stores.values():
                store.close()


class Client004:
    """A GS QKD 004 application over TLS with its client certificate (the framing of qkdd.etsi004.wire)."""

    def __init__(self, pki: DevPKI, app: str | None, kme: str, address: tuple[str, int]) -> None:
        self.context = ssl.create_default_context(cafile=str(pki.ca_cert_file))
        if app is not None:
            issued = pki.saes[app]
            self.context.load_cert_chain(str(issued.cert_file), str(issued.key_file))
        self.kme, self.address = kme, address
        self.stream: trio.SSLStream | None = None
        self.buffer = b""

    async def __aenter__(self) -> "Client004":
        tcp = await trio.open_tcp_stream(*self.address)
        self.stream = trio.SSLStream(tcp, self.context, server_hostname=self.kme)
        await self.stream.do_handshake()
        return self

    async def __aexit__(self, *exc) -> None:
        await trio.aclose_forcefully(self.stream)

    async def call(self, request: Request) -> Response:
        await self.stream.send_all(encode_request(request))
        while True:
            try:
                response, self.buffer = decode_response(self.buffer)
                return response
            except WireError:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("the server closed the connection")
                self.buffer += data


def qos(chunk_bytes: int = 32, *, max_bps: int = 0, min_bps: int = 0, timeout_ms: int = 30_000, ttl_s: int = 0,
        mimetype: str = "application/json") -> QoS:
    return QoS(chunk_bytes, max_bps, min_bps, 0, 0, timeout_ms, ttl_s, mimetype)


# -- SKIP ---------------------------------------------------------------------------------------------------

SYSTEMS = {"a": "KP_Alice", "b": "KP_Bob"}
ROUTERS = {"a": ("router-a", bytes(range(32))), "b": ("router-b", bytes(range(100, 132)))}


async def start_skip(ends, nursery, pki) -> None:
    """A SKIP server at each end (TLS-PSK, the router of that end its one client)."""
    from qkdd.http.router import Router
    from qkdd.http.server import HTTPServer
    from qkdd.skip import api
    from qkdd.skip.keys import SkipKeys
    from qkdd.skip.psk import psk_server_context
    for name, end in ends.items():
        other = "b" if name == "a" else "a"
        end.skip_keys = SkipKeys(LINK_ID, end.store, end.reservations, key_bits=KEY_BITS)
        router = Router()
        api.register(router, SYSTEMS[name], {SYSTEMS[other]: end.skip_keys})
        identity, psk = ROUTERS[name]
        server = HTTPServer(f"skip-{name}", "127.0.0.1", 0, router, ssl_context=psk_server_context({identity: psk}))
        end.skip_address = await nursery.start(server.run)


async def skip_get(address, identity: str, psk: bytes, target: str, cipher: str = "PSK-AES256-GCM-SHA384"):
    """(status, JSON body) of GET `target` over TLS-PSK, as a router does it."""
    import json as _json

    from qkdd.skip.psk import psk_client_context
    tcp = await trio.open_tcp_stream(*address)
    stream = trio.SSLStream(tcp, psk_client_context(identity, psk, cipher), server_hostname=None)
    try:
        await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: kp\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            data += chunk
    finally:
        await trio.aclose_forcefully(stream)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), _json.loads(body or b"null")

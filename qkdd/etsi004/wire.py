"""ETSI GS QKD 004 (V2.1.1) messages on the wire (sans-IO): the binary framing of the public open-source
004 implementations (QUBIP's etsi-qkd-004 client), so that their clients work against qkdd unchanged.

Theory of operation
-------------------
A connection carries requests from the application and one response per request, in order. Every
message is a header and a payload (big-endian):

    header:  version major u8 | minor u8 | patch u8 (1.0.1) | service type i8 | payload length u32
    OPEN_CONNECT request  (2): source URI, NUL-terminated | destination URI, NUL-terminated | QoS | KSID 16 bytes
    OPEN_CONNECT response (3): status u32 | QoS | KSID 16 bytes   (status 0 or 7; any other: status alone)
    GET_KEY request       (4): KSID 16 bytes | index u32 | metadata size u32 (the buffer the application has)
    GET_KEY response      (5): status u32 | index u32 | key chunk size u32 | key | metadata size u32 | metadata
                               (status 0; any other: status alone)
    CLOSE request         (8): KSID 16 bytes
    CLOSE response        (9): status u32
    QoS: key_chunk_size u32 (bytes) | max_bps u32 | min_bps u32 | jitter u32 | priority u32 | timeout u32 (ms) |
         TTL u32 (s) | metadata mimetype, 256 bytes NUL-padded   (GS QKD 004 clause 6.1, table 2)

A KSID of sixteen zero bytes in OPEN_CONNECT asks the key manager to choose one (clause 6.1). The
`FrameReader` takes bytes as they arrive and yields whole requests; a header naming a payload above
MAX_PAYLOAD_BYTES, an unknown service type or a payload that does not parse is a WireError, after which
the connection is closed (no resynchronisation on a byte stream).
"""
from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass

VERSION = (1, 0, 1)
MAX_PAYLOAD_BYTES = 4096          # the largest request: two URIs, the QoS and a KSID
MAX_URI_BYTES = 1024
MIMETYPE_BYTES = 256
NIL_KSID = "00000000-0000-0000-0000-000000000000"


class Service(enum.IntEnum):
    OPEN_CONNECT_REQUEST = 0x02
    OPEN_CONNECT_RESPONSE = 0x03
    GET_KEY_REQUEST = 0x04
    GET_KEY_RESPONSE = 0x05
    CLOSE_REQUEST = 0x08
    CLOSE_RESPONSE = 0x09


class Status(enum.IntEnum):
    """GS QKD 004 V2.1.1 clause 6.1, table 2, "Status"."""

    SUCCESSFUL = 0
    PEER_NOT_CONNECTED = 1
    INSUFFICIENT_KEY = 2
    PEER_APPLICATION_NOT_CONNECTED = 3
    NO_QKD_CONNECTION = 4
    KSID_IN_USE = 5
    TIMEOUT = 6
    QOS_NOT_MET = 7
    METADATA_SIZE_INSUFFICIENT = 8


class WireError(Exception):
    """Bytes that are not a well-formed 004 request."""


@dataclass(frozen=True)
class QoS:
    key_chunk_size: int       # bytes
    max_bps: int
    min_bps: int
    jitter: int
    priority: int
    timeout_ms: int
    ttl_s: int
    metadata_mimetype: str = "application/json"


@dataclass(frozen=True)
class OpenConnect:
    source: str
    destination: str
    qos: QoS
    key_stream_id: str        # NIL_KSID: the key manager chooses


@dataclass(frozen=True)
class GetKey:
    key_stream_id: str
    index: int
    metadata_size: int


@dataclass(frozen=True)
class Close:
    key_stream_id: str


Request = OpenConnect | GetKey | Close

_HEADER = struct.Struct(">BBBbI")
_QOS = struct.Struct(">7I")
_U32 = struct.Struct(">I")


def _frame(service: Service, payload: bytes) -> bytes:
    return _HEADER.pack(*VERSION, service, len(payload)) + payload


def encode_qos(qos: QoS) -> bytes:
    mimetype = qos.metadata_mimetype.encode("utf-8")
    if len(mimetype) >= MIMETYPE_BYTES:
        raise ValueError(f"metadata mimetype of {len(mimetype)} bytes, at most {MIMETYPE_BYTES - 1}")
    return (_QOS.pack(qos.key_chunk_size, qos.max_bps, qos.min_bps, qos.jitter, qos.priority, qos.timeout_ms,
                      qos.ttl_s) + mimetype.ljust(MIMETYPE_BYTES, b"\0"))


def _decode_qos(data: bytes) -> QoS:
    fields = _QOS.unpack_from(data)
    mimetype = data[_QOS.size:_QOS.size + MIMETYPE_BYTES].split(b"\0", 1)[0]
    try:
        text = mimetype.decode("ascii")
    except UnicodeDecodeError:
        raise WireError("the metadata mimetype is not ASCII") from None
    return QoS(*fields, text)


# -- requests (the application's side encodes, qkdd decodes) --------------------------------------------

def encode_request(request: Request) -> bytes:
    if isinstance(request, OpenConnect):
        payload = (_uri(request.source) + _uri(request.destination) + encode_qos(request.qos)
                   + uuid.UUID(request.key_stream_id).bytes)
        return _frame(Service.OPEN_CONNECT_REQUEST, payload)
    if isinstance(request, GetKey):
        return _frame(Service.GET_KEY_REQUEST, uuid.UUID(request.key_stream_id).bytes
                      + struct.pack(">II", request.index, request.metadata_size))
    return _frame(Service.CLOSE_REQUEST, uuid.UUID(request.key_stream_id).bytes)


def _uri(text: str) -> bytes:
    data = text.encode("utf-8")
    if b"\0" in data or len(data) > MAX_URI_BYTES:
        raise ValueError("a URI holds no NUL and at most 1024 bytes")
    return data + b"\0"


def decode_request(service: int, payload: bytes) -> Request:
    if service == Service.OPEN_CONNECT_REQUEST:
        source, rest = _take_uri(payload)
        destination, rest = _take_uri(rest)
        if len(rest) != _QOS.size + MIMETYPE_BYTES + 16:
            raise WireError(f"OPEN_CONNECT: {len(rest)} bytes after the URIs, "
                            f"expected {_QOS.size + MIMETYPE_BYTES + 16}")
        return OpenConnect(source, destination, _decode_qos(rest), str(uuid.UUID(bytes=rest[-16:])))
    if service == Service.GET_KEY_REQUEST:
        if len(payload) != 24:
            raise WireError(f"GET_KEY: payload of {len(payload)} bytes, expected 24")
        index, metadata_size = struct.unpack_from(">II", payload, 16)
        return GetKey(str(uuid.UUID(bytes=payload[:16])), index, metadata_size)
    if service == Service.CLOSE_REQUEST:
        if len(payload) != 16:
            raise WireError(f"CLOSE: payload of {len(payload)} bytes, expected 16")
        return Close(str(uuid.UUID(bytes=payload)))
    raise WireError(f"unknown service type {service}")


def _take_uri(data: bytes) -> tuple[str, bytes]:
    end = data.find(b"\0", 0, MAX_URI_BYTES + 1)
    if end < 0:
        raise WireError("a URI is not NUL-terminated within 1024 bytes")
    try:
        return data[:end].decode("utf-8"), data[end + 1:]
    except UnicodeDecodeError:
        raise WireError("a URI is not UTF-8") from None


class FrameReader:
    """Bytes from the application in, whole requests out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Request]:
        self._buffer += data
        requests = []
        while len(self._buffer) >= _HEADER.size:
            major, _, _, service, length = _HEADER.unpack_from(self._buffer)
            if major != VERSION[0]:
                raise WireError(f"protocol version {major}.x, this end speaks {VERSION[0]}.x")
            if length > MAX_PAYLOAD_BYTES:
                raise WireError(f"payload of {length} bytes exceeds {MAX_PAYLOAD_BYTES}")
            if len(self._buffer) < _HEADER.size + length:
                break
            payload = bytes(self._buffer[_HEADER.size:_HEADER.size + length])
            del self._buffer[:_HEADER.size + length]
            requests.append(decode_request(service, payload))
        return requests


# -- responses (qkdd encodes, the application decodes) ----------------------------------------------------

def open_connect_response(status: Status, qos: QoS | None = None, key_stream_id: str = NIL_KSID) -> bytes:
    payload = _U32.pack(status)
    if status in (Status.SUCCESSFUL, Status.QOS_NOT_MET) and qos is not None:
        payload += encode_qos(qos) + uuid.UUID(key_stream_id).bytes
    return _frame(Service.OPEN_CONNECT_RESPONSE, payload)


def get_key_response(status: Status, index: int = 0, key: bytes = b"", metadata: bytes = b"") -> bytes:
    if status != Status.SUCCESSFUL:
        return _frame(Service.GET_KEY_RESPONSE, _U32.pack(status))
    return _frame(Service.GET_KEY_RESPONSE, struct.pack(">III", status, index, len(key)) + key
                  + _U32.pack(len(metadata)) + metadata)


def close_response(status: Status) -> bytes:
    return _frame(Service.CLOSE_RESPONSE, _U32.pack(status))


@dataclass(frozen=True)
class Response:
    service: Service
    status: Status
    qos: QoS | None = None
    key_stream_id: str | None = None
    index: int | None = None
    key: bytes = b""
    metadata: bytes = b""


def decode_response(data: bytes) -> tuple[Response, bytes]:
    """One response from the front of `data` and the bytes after it (a client's side; tests and benches).
    WireError if `data` does not yet hold a whole response."""
    if len(data) < _HEADER.size:
        raise WireError("incomplete header")
    _, _, _, service, length = _HEADER.unpack_from(data)
    if len(data) < _HEADER.size + length:
        raise WireError("incomplete payload")
    payload, rest = data[_HEADER.size:_HEADER.size + length], data[_HEADER.size + length:]
    status = Status(_U32.unpack_from(payload)[0])
    if service == Service.OPEN_CONNECT_RESPONSE and len(payload) > 4:
        qos = _decode_qos(payload[4:4 + _QOS.size + MIMETYPE_BYTES])
        return Response(Service(service), status, qos, str(uuid.UUID(bytes=payload[-16:]))), rest
    if service == Service.GET_KEY_RESPONSE and len(payload) > 4:
        index, size = struct.unpack_from(">II", payload, 4)
        key = payload[12:12 + size]
        (metadata_size,) = _U32.unpack_from(payload, 12 + size)
        metadata = payload[16 + size:16 + size + metadata_size]
        return Response(Service(service), status, index=index, key=key, metadata=metadata), rest
    return Response(Service(service), status), rest

"""ETSI GS QKD 014 client of one SAE at its vendor KME: Get status, Get key (enc_keys), Get key with key
IDs (dec_keys) over mutual TLS, and the strict parsing of each answer.

Every failure is one Etsi014Error whose `kind` says what happened and whether a retry may help
(TRANSIENT_KINDS: KME unreachable, timed out, 503 or another 5xx) and whose message names the KME, the
call and the cause. Key material never appears in an error, a log line or a repr.
"""
from __future__ import annotations

import base64
import binascii
import json
import ssl
from dataclasses import dataclass, field

import httpx

from qkdd.hal.base import DeviceError

MAX_BODY_BYTES = 8 << 20               # a KME answer larger than this is refused unread
MAX_KEY_ID_CHARS = 128
TRANSIENT_KINDS = frozenset({"unreachable", "timeout", "unavailable", "server_error"})


class Etsi014Error(DeviceError):
    """The vendor KME could not be used for one call; `kind` is one of unreachable, timeout, unauthorized,
    unavailable (503), rejected (another 4xx), server_error (another 5xx), malformed (a bad answer)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind

    @property
    def transient(self) -> bool:
        return self.kind in TRANSIENT_KINDS


@dataclass(frozen=True)
class KmeStatus:
    """The fields of ETSI 014 Status (clause 6.1, Table 9) that qkdd uses."""

    source_kme_id: str
    target_kme_id: str
    key_size_bits: int
    stored_key_count: int
    max_key_count: int
    max_key_per_request: int
    max_key_size_bits: int
    min_key_size_bits: int


@dataclass(frozen=True)
class VendorKey:
    key_id: str
    material: bytes = field(repr=False)


def tls_context(cert_file: str, key_file: str, ca_file: str) -> ssl.SSLContext:
    """The client side of the KME's mutual TLS; Etsi014Error (kind "unauthorized") when a file cannot be
    loaded, naming it."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise Etsi014Error("unauthorized", f"KME CA file {ca_file}: {exc}") from None
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise Etsi014Error("unauthorized", f"SAE certificate {cert_file} / key {key_file}: {exc}") from None
    return context


class Etsi014Client:
    """Calls of one SAE (`sae_id`) at the KME at `base_url`; use as an async context manager."""

    def __init__(self, base_url: str, context: ssl.SSLContext, *, path_prefix: str = "/api/v1/keys",
                 timeout_s: float = 10.0):
        self.base_url = base_url
        self.path_prefix = path_prefix
        self._http = httpx.AsyncClient(verify=context, timeout=timeout_s, trust_env=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def status(self, slave_sae_id: str) -> KmeStatus:
        return parse_status(await self._call("GET", f"{slave_sae_id}/status", "Get status"),
                            f"KME {self.base_url} Get status")

    async def enc_keys(self, slave_sae_id: str, number: int, size_bits: int) -> list[VendorKey]:
        body = await self._call("POST", f"{slave_sae_id}/enc_keys", "Get key", {"number": number, "size": size_bits})
        keys = parse_key_container(body, size_bits, f"KME {self.base_url} Get key")
        if len(keys) != number:
            raise Etsi014Error("malformed", f"KME {self.base_url} Get key: asked for {number} keys, got {len(keys)}")
        return keys

    async def dec_keys(self, master_sae_id: str, key_ids: list[str], size_bits: int) -> list[VendorKey]:
        body = await self._call("POST", f"{master_sae_id}/dec_keys", "Get key with key IDs",
                                {"key_IDs": [{"key_ID": key_id} for key_id in key_ids]})
        keys = parse_key_container(body, size_bits, f"KME {self.base_url} Get key with key IDs")
        if [key.key_id for key in keys] != list(key_ids):
            raise Etsi014Error("malformed", f"KME {self.base_url} Get key with key IDs: the answer's key IDs "
                               f"are not the {len(key_ids)} asked for")
        return keys

    async def _call(self, method: str, path: str, what: str, payload: dict | None = None) -> object:
        url = f"{self.base_url}{self.path_prefix}/{path}"
        where = f"KME {self.base_url} {what}"
        try:
            async with self._http.stream(method, url, json=payload) as response:
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY_BYTES:
                        raise Etsi014Error("malformed", f"{where}: answer larger than {MAX_BODY_BYTES} bytes")
                status = response.status_code
        except httpx.TimeoutException:
            raise Etsi014Error("timeout", f"{where}: no answer within {self._http.timeout.read:g} s") from None
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise Etsi014Error("unreachable", f"{where}: {type(exc).__name__}: {str(exc)[:200]}") from None
        except httpx.HTTPError as exc:
            raise Etsi014Error("unreachable", f"{where}: {type(exc).__name__}: {str(exc)[:200]}") from None
        if status != 200:
            raise _status_error(where, status, body)
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Etsi014Error("malformed", f"{where}: the answer is not JSON ({str(exc)[:80]})") from None


def _status_error(where: str, status: int, body: bytes) -> Etsi014Error:
    """The error of a non-200 answer, with the ETSI Error `message` (clause 6.6) when it sent one."""
    message = ""
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
            message = ": " + "".join(c for c in parsed["message"][:160] if c.isprintable())
    except (ValueError, UnicodeDecodeError):
        pass
    if status == 401:
        return Etsi014Error("unauthorized", f"{where}: HTTP 401 (the KME does not accept this SAE's "
                                            f"certificate){message}")
    if status == 503:
        return Etsi014Error("unavailable", f"{where}: HTTP 503{message}")
    if 400 <= status < 500:
        return Etsi014Error("rejected", f"{where}: HTTP {status}{message}")
    return Etsi014Error("server_error", f"{where}: HTTP {status}{message}")


def _int_field(body: dict, name: str, where: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Etsi014Error("malformed", f"{where}: {name} must be a non-negative integer, got {value!r:.40}")
    return value


def parse_status(body: object, where: str = "KME Get status") -> KmeStatus:
    """ETSI 014 Status (clause 6.1); Etsi014Error ("malformed") naming the first bad field."""
    if not isinstance(body, dict):
        raise Etsi014Error("malformed", f"{where}: Status is not a JSON object")
    for name in ("source_KME_ID", "target_KME_ID"):
        if not isinstance(body.get(name), str):
            raise Etsi014Error("malformed", f"{where}: {name} must be a string")
    return KmeStatus(body["source_KME_ID"][:128], body["target_KME_ID"][:128], _int_field(body, "key_size", where),
                     _int_field(body, "stored_key_count", where), _int_field(body, "max_key_count", where),
                     _int_field(body, "max_key_per_request", where), _int_field(body, "max_key_size", where),
                     _int_field(body, "min_key_size", where))


def parse_key_container(body: object, size_bits: int, where: str = "KME") -> list[VendorKey]:
    """ETSI 014 Key container (clause 6.3): every key a base64 string of exactly `size_bits` bits and a
    printable key ID; Etsi014Error ("malformed") otherwise, naming the key's position, never its bytes."""
    if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
        raise Etsi014Error("malformed", f"{where}: key container: no \"keys\" array")
    keys = []
    for index, entry in enumerate(body["keys"]):
        if not isinstance(entry, dict):
            raise Etsi014Error("malformed", f"{where}: key container: keys[{index}] is not an object")
        key_id, encoded = entry.get("key_ID"), entry.get("key")
        if not isinstance(key_id, str) or not 0 < len(key_id) <= MAX_KEY_ID_CHARS or not key_id.isprintable():
            raise Etsi014Error("malformed", f"{where}: key container: keys[{index}].key_ID is not a printable string "
                               f"of 1-{MAX_KEY_ID_CHARS} characters")
        if not isinstance(encoded, str):
            raise Etsi014Error("malformed", f"{where}: key container: keys[{index}].key is not a string")
        try:
            material = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise Etsi014Error("malformed", f"{where}: key container: keys[{index}].key is not base64") from None
        if len(material) * 8 != size_bits:
            raise Etsi014Error("malformed", f"{where}: key container: keys[{index}] has {len(material) * 8} bits, "
                               f"asked for {size_bits}")
        keys.append(VendorKey(key_id, material))
    return keys

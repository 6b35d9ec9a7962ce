"""Reads and checks what an SAE sends: Key request (ETSI GS QKD 014 §6.2, POST body or GET query of
`enc_keys`) and Key IDs (§6.4, POST body or the `key_ID` query of `dec_keys`). Every problem is a
BadRequest in the Error data format (§6.5); messages the spec words are used verbatim."""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from qkdd.kme.config import ID_PATTERN, Etsi014Config
from qkdd.kme.errors import BadRequest

# §6.2 and §6.4: the messages a KME returns in these cases.
SIZE_NOT_MULTIPLE_OF_8 = "size shall be a multiple of 8"
EXTENSION_MANDATORY_UNSUPPORTED = "not all extension_mandatory parameters are supported"
KEYS_NOT_FOUND = "one or more keys specified are not found on KME"
BAD_REQUEST = "bad request format"

_DECIMAL = re.compile(r"[+-]?[0-9]{1,12}")
_UUID_FORM = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
# Extensions this KME handles; none so far, so any extension_mandatory entry is refused.
SUPPORTED_MANDATORY_EXTENSIONS: frozenset[str] = frozenset()


class Request(Protocol):
    """What these checks read of an SAE's HTTP request (the listener's Request)."""

    @property
    def method(self) -> str: ...                      # upper case

    @property
    def query(self) -> dict[str, list[str]]: ...

    @property
    def body(self) -> bytes: ...


def bad(field: str, problem: str, message: str = BAD_REQUEST) -> BadRequest:
    return BadRequest(message, [{field: problem}])


@dataclass(frozen=True)
class KeyRequest:
    number: int
    size_bits: int
    additional_slave_sae_ids: tuple[str, ...]


def _body_object(request: Request, what: str) -> dict[str, Any] | None:
    """The JSON object in the body, or None for an empty body.

    The declared content type is not checked: §5.1 (Table 1) makes every body UTF-8 JSON, and clients on
    libcurl that set no Content-Type send application/x-www-form-urlencoded (its default for a POST body).
    """
    if not request.body.strip():
        return None
    try:
        payload = json.loads(request.body.decode("utf-8"), parse_constant=_no_constant,
                             object_pairs_hook=partial(_unique_names, what))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad("body", f"{what} is not valid JSON") from None
    if not isinstance(payload, dict):
        raise bad("body", f"{what} must be a JSON object")
    return payload


def _check_no_body(request: Request) -> None:
    """§6.2 and §6.4: a GET request has no body; one that has is refused rather than served from its
    query alone, which would hand out keys the body did not ask for."""
    if request.body.strip():
        raise bad("body", "a GET request carries no body; use POST")


def _unique_names(what: str, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict; BadRequest if it names an item twice (RFC 8259 §4 leaves the meaning to each
    parser, so a proxy and this KME could read different requests from the same bytes)."""
    names = {name for name, _ in pairs}
    if len(names) != len(pairs):
        raise bad("body", f"{what} has an object that names an item twice")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _integer(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(field, "must be an integer")
    return value


def _query_integer(request: Request, field: str) -> int | None:
    values = request.query.get(field)
    if values is None:
        return None
    # Spaces and tabs around the number are tolerated; not whatever else str.strip() drops (such as
    # "\x1e", which int() then refuses).
    text = values[0].strip(" \t") if len(values) == 1 else ""
    if not _DECIMAL.fullmatch(text):
        raise bad(field, "must be one decimal integer")
    return int(text)


def parse_key_request(request: Request, config: Etsi014Config) -> tuple[KeyRequest, list[dict]]:
    """The Key request of an enc_keys call with defaults filled in, and the ignored optional extensions.

    GET carries `number` and/or `size` as query parameters (§6.2); POST carries the JSON object, and an
    empty POST body means the defaults.
    """
    number: int | None
    size: int | None
    additional: Any = None
    ignored_optional: list[dict] = []
    if request.method == "POST":
        if request.query:
            raise bad("query", "a POST request carries its parameters in the body")
        body = _body_object(request, "Key request") or {}
        unknown = sorted(set(body) - {"number", "size", "additional_slave_SAE_IDs", "extension_mandatory",
                                      "extension_optional"})
        if unknown:
            raise bad(unknown[0], "is not a Key request item")
        number = None if body.get("number") is None else _integer(body["number"], "number")
        size = None if body.get("size") is None else _integer(body["size"], "size")
        additional = body.get("additional_slave_SAE_IDs")
        _check_mandatory_extensions(body.get("extension_mandatory"))
        ignored_optional = _extension_list(body.get("extension_optional"), "extension_optional")
    else:
        _check_no_body(request)
        unknown = sorted(set(request.query) - {"number", "size"})
        if unknown:
            raise bad(unknown[0], "only number and size may be given as query parameters (§6.2)")
        number = _query_integer(request, "number")
        size = _query_integer(request, "size")
    number = 1 if number is None else number
    size = config.key_size_bits if size is None else size
    if number < 1:
        raise bad("number", "must be at least 1")
    if number > config.max_key_per_request:
        raise bad("number", f"exceeds max_key_per_request ({config.max_key_per_request})")
    if size < 1:
        raise bad("size", "must be a positive number of bits")
    if size % 8:
        raise bad("size", f"{size} is not a multiple of 8", SIZE_NOT_MULTIPLE_OF_8)
    if not config.min_key_size_bits <= size <= config.max_key_size_bits:
        raise bad("size", f"must lie within [min_key_size, max_key_size] = "
                          f"[{config.min_key_size_bits}, {config.max_key_size_bits}]")
    return KeyRequest(number, size, _additional_slaves(additional, config)), ignored_optional


def _additional_slaves(value: Any, config: Etsi014Config) -> tuple[str, ...]:
    if value is None:
        return ()
    field = "additional_slave_SAE_IDs"
    if not isinstance(value, list):
        raise bad(field, "must be an array of SAE IDs")
    if not value:
        raise bad(field, "must not be empty when given")
    if len(value) > config.max_sae_id_count:
        raise bad(field, f"lists {len(value)} SAE IDs, max_SAE_ID_count is {config.max_sae_id_count}")
    for sae_id in value:
        if not isinstance(sae_id, str) or not sae_id.strip():
            raise bad(field, "holds a blank or non-string SAE ID")
        if not ID_PATTERN.fullmatch(sae_id):
            raise bad(field, "holds a malformed SAE ID")
    if len(set(value)) != len(value):
        raise bad(field, "lists an SAE ID twice")
    return tuple(value)


def _extension_list(value: Any, field: str) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise bad(field, "must be an array of objects (name/value pairs)")
    return value


def _check_mandatory_extensions(value: Any) -> None:
    unsupported = [name for item in _extension_list(value, "extension_mandatory") for name in item
                   if name not in SUPPORTED_MANDATORY_EXTENSIONS]
    if unsupported:
        raise BadRequest(EXTENSION_MANDATORY_UNSUPPORTED,
                         [{"extension_mandatory_unsupported": f"{name} is not supported"} for name in unsupported])


def canonical_key_id(value: Any, field: str = "key_ID") -> str:
    """A key ID in the 8-4-4-4-12 UUID form (either case), as lowercase canonical UUID; BadRequest otherwise."""
    if not isinstance(value, str) or not _UUID_FORM.fullmatch(value):
        raise bad(field, "must be a UUID (8-4-4-4-12 hexadecimal digits)")
    return str(uuid.UUID(value))


def parse_key_ids(request: Request, config: Etsi014Config) -> list[str]:
    """The key IDs of a dec_keys call: one `key_ID` query parameter (GET) or Key IDs (POST, §6.4)."""
    if request.method == "POST":
        if request.query:
            raise bad("query", "a POST request carries its parameters in the body")
        body = _body_object(request, "Key IDs")
        if body is None:
            raise bad("key_IDs", "is required")
        unknown = sorted(set(body) - {"key_IDs", "key_IDs_extension"})
        if unknown:
            raise bad(unknown[0], "is not a Key IDs item")
        entries = body.get("key_IDs")
        if not isinstance(entries, list) or not entries:
            raise bad("key_IDs", "must be a non-empty array of objects")
        key_ids = []
        for entry in entries:
            if not isinstance(entry, dict) or "key_ID" not in entry:
                raise bad("key_IDs", "each entry must be an object with a key_ID")
            extra = sorted(set(entry) - {"key_ID", "key_ID_extension"})
            if extra:
                raise bad(extra[0], "is not a key_IDs entry item")
            key_ids.append(canonical_key_id(entry["key_ID"]))
    else:
        _check_no_body(request)
        unknown = sorted(set(request.query) - {"key_ID"})
        if unknown:
            raise bad(unknown[0], "only key_ID may be given as a query parameter (§6.4)")
        values = request.query.get("key_ID")
        if not values or len(values) != 1:
            raise bad("key_ID", "GET takes exactly one key_ID query parameter; use POST for several")
        key_ids = [canonical_key_id(values[0])]
    if len(key_ids) > config.max_key_per_request:
        raise bad("key_IDs", f"lists {len(key_ids)} keys, max_key_per_request is {config.max_key_per_request}")
    if len(set(key_ids)) != len(key_ids):
        raise bad("key_IDs", "lists a key ID twice")
    return key_ids

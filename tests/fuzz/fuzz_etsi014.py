"""Fuzz target: ETSI GS QKD 014 requests as an SAE sends them. The bytes are the POST body of enc_keys (Key
request) and of dec_keys (Key IDs), and, when they are ASCII, the query string of the GET forms, parsed as
the HTTP connection parses it. Each parse gives a request or a BadRequest that the routes answer as a 400
in the §6.5 Error format."""
from __future__ import annotations

import json
from urllib.parse import parse_qs

from tests.fuzz._common import Finding, fuzz, instrumented

with instrumented():
    from qkdd.api.etsi014 import http_error
    from qkdd.http.connection import MAX_QUERY_FIELDS
    from qkdd.http.messages import Request
    from qkdd.kme.config import Etsi014Config
    from qkdd.kme.errors import KmeError
    from qkdd.kme.key_request import KeyRequest, parse_key_ids, parse_key_request

CONFIG = Etsi014Config(kme_id="kme-a")


def _request(method: str, body: bytes, query: dict[str, list[str]]) -> Request:
    return Request(method=method, path="/api/v1/keys/sae-b/enc_keys", query=query, headers=[], body=body,
                   request_id="fuzz", raw_path="/api/v1/keys/sae-b/enc_keys")


def _check_refusal(refusal: KmeError) -> None:
    error = http_error(refusal)
    if error is None or error.status != 400 or not error.details or not all(isinstance(d, dict) and len(d) == 1
                                                           for d in error.details):
        raise Finding(f"refusal is not a 400 in the Error data format: {error.status} {error.details!r}")
    json.dumps(error.to_response().body.decode())


def _parse_both(request: Request) -> None:
    try:
        key_request, ignored = parse_key_request(request, CONFIG)
    except KmeError as error:
        _check_refusal(error)
    else:
        if not isinstance(key_request, KeyRequest) or not 1 <= key_request.number <= CONFIG.max_key_per_request \
                or key_request.size_bits % 8 \
                or not CONFIG.min_key_size_bits <= key_request.size_bits <= CONFIG.max_key_size_bits:
            raise Finding(f"accepted an out-of-range Key request: {key_request!r}")
        if not isinstance(ignored, list):
            raise Finding("extension_optional not returned as a list")
    try:
        key_ids = parse_key_ids(request, CONFIG)
    except KmeError as error:
        _check_refusal(error)
    else:
        if not 1 <= len(key_ids) <= CONFIG.max_key_per_request or len(set(key_ids)) != len(key_ids) \
                or not all(isinstance(key_id, str) and len(key_id) == 36 and key_id == key_id.lower()
                           for key_id in key_ids):
            raise Finding(f"accepted malformed Key IDs: {key_ids!r}")


def TestOneInput(data: bytes) -> None:
    _parse_both(_request("POST", data, {}))
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return
    try:
        query = parse_qs(text, keep_blank_values=True, errors="strict", max_num_fields=MAX_QUERY_FIELDS)
    except (UnicodeDecodeError, ValueError):
        return              # the connection answers 400 (malformed query string) before any handler runs
    _parse_both(_request("GET", b"", query))


def seeds() -> list[bytes]:
    key_id = "7f2a1c3e-5b4d-4e6f-8a9b-0c1d2e3f4a5b"
    return [
        json.dumps({"number": 2, "size": 256}).encode(),
        json.dumps({"number": 1, "size": 512, "additional_slave_SAE_IDs": ["sae-c", "sae-d"],
                    "extension_optional": [{"abc_route_type": "direct"}]}).encode(),
        json.dumps({"extension_mandatory": [{"abc_qos": 1}]}).encode(),
        json.dumps({"key_IDs": [{"key_ID": key_id}, {"key_ID": key_id.upper().replace("7F", "7E")}]}).encode(),
        b"number=3&size=1024",
        b"key_ID=" + key_id.encode(),
        b"",
    ]


if __name__ == "__main__":
    fuzz(TestOneInput)

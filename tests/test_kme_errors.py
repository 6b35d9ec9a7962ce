"""The KME's refusals (qkdd/kme/errors.py) on the wire: api/etsi014.py alone gives them their HTTP status,
Error data format body and headers, and nothing in qkdd/kme/ knows about HTTP."""
import ast
import os
import pathlib

import pytest
import trio

from qkdd.api.etsi014 import http_error, register
from qkdd.http.messages import HTTPError, PeerCertificate, Request
from qkdd.http.router import Router
from qkdd.keystore import KeyStore
from qkdd.kme.errors import BadRequest, KeysUnavailable, KmeError, Unauthorized
from qkdd.kme.key_request import bad
from qkdd.kme.ledger import Ledger
from qkdd.kme.service import KmeService
from tests.test_kme_take_block import CONFIG

KME_PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "qkdd" / "kme"


def wire(error: HTTPError) -> tuple[int, bytes, list[tuple[str, str]]]:
    response = error.to_response()
    return response.status, response.body, response.headers


def test_each_refusal_has_its_status_body_and_headers():
    assert wire(http_error(Unauthorized("a client certificate is required"))) == (
        401, b'{"message":"unauthorized","details":[{"reason":"a client certificate is required"}]}', [])
    assert wire(http_error(bad("size", "12 is not a multiple of 8", "size shall be a multiple of 8"))) == (
        400, b'{"message":"size shall be a multiple of 8","details":[{"size":"12 is not a multiple of 8"}]}', [])
    assert wire(http_error(KeysUnavailable("the slave SAE's KME is not reachable"))) == (
        503, b'{"message":"keys are not available","details":[{"reason":"the slave SAE\'s KME is not reachable"}]}',
        [("Retry-After", "1")])
    assert wire(http_error(KeysUnavailable("busy", retry_after_s=5)))[2] == [("Retry-After", "5")]


def test_a_subclass_takes_its_kinds_status_and_an_error_of_no_kind_has_none():
    class KeysNotFound(BadRequest):
        pass

    assert http_error(KeysNotFound("one or more keys specified are not found on KME")).status == 400
    assert http_error(KmeError("no kind")) is None


def test_the_routes_answer_refusals_raised_in_the_kme_as_http(tmp_path):
    """Real routes over a real key store and ledger: the registry's Unauthorized, a path check's BadRequest
    and the service's KeysUnavailable (no session with the slave's KME) reach the listener as HTTPError."""
    store = KeyStore(str(tmp_path / "keys.db"), os.urandom(32))
    router = Router()
    register(router, KmeService(CONFIG, store, Ledger(database=store.database)))
    sae_a = PeerCertificate("CN=sae-a", "sae-a", (), (), "00" * 32)

    def answer(method: str, path: str, certificate: PeerCertificate | None) -> HTTPError:
        handler, params = router.resolve(method, path)
        request = Request(method, path, {}, [], b"", "request-1", peer_cert=certificate, path_params=params,
                          raw_path=path)
        with pytest.raises(HTTPError) as refused:
            trio.run(handler, request)
        return refused.value

    assert answer("GET", "/api/v1/keys/sae-b/status", None).status == 401
    assert answer("GET", "/api/v1/keys/sae-a/status", sae_a).details == [{"slave_SAE_ID": "names the calling "
                                                                                           "SAE itself"}]
    unavailable = answer("POST", "/api/v1/keys/sae-b/enc_keys", sae_a)
    assert (unavailable.status, unavailable.headers) == (503, [("Retry-After", "1")])
    assert unavailable.details == [{"reason": "the slave SAE's KME is not reachable"}]
    assert answer("GET", "/api/v1/keys/sae-b/dec_keys", sae_a).status == 400     # no key_ID


def test_nothing_in_the_kme_package_imports_http():
    for path in KME_PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(name == "qkdd.http" or name.startswith(("qkdd.http.", "http")) for name in names), path

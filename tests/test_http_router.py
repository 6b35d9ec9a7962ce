"""Router: parameters, specificity, 404/405 with Allow, HEAD from GET, and paths that try to mislead."""
import pytest

from qkdd.http import HTTPError, Response, Router


async def _handler_a(request):
    return Response.json("a")


async def _handler_b(request):
    return Response.json("b")


def _router() -> Router:
    router = Router()
    router.get("/v1/links", _handler_a)
    router.get("/v1/links/{link_id}", _handler_a)
    router.route("DELETE", "/v1/links/{link_id}", _handler_b)
    router.get("/v1/links/status", _handler_b)
    router.get("/v1/keys/{sae_id}/enc_keys", _handler_b)
    return router


def _status(router, method, path):
    with pytest.raises(HTTPError) as caught:
        router.resolve(method, path)
    return caught.value


def test_parameters_are_percent_decoded():
    handler, params = _router().resolve("GET", "/v1/links/link%20one")
    assert handler is _handler_a and params == {"link_id": "link one"}
    _, params = _router().resolve("GET", "/v1/keys/sae-%C3%A4/enc_keys")
    assert params == {"sae_id": "sae-ä"}


def test_literal_segments_win_over_parameters():
    handler, params = _router().resolve("GET", "/v1/links/status")
    assert handler is _handler_b and params == {}


def test_unknown_path_is_404_and_blank_segment_does_not_match():
    assert _status(_router(), "GET", "/v1/nothing").status == 404
    assert _status(_router(), "GET", "/v1/links/").status == 404
    assert _status(_router(), "GET", "/v1//links").status == 404
    assert _status(_router(), "GET", "/v1/keys//enc_keys").status == 404


def test_wrong_method_is_405_with_allow():
    error = _status(_router(), "POST", "/v1/links/abc")
    assert error.status == 405
    assert dict(error.headers)["Allow"] == "DELETE, GET, HEAD"


def test_head_is_served_by_get():
    handler, params = _router().resolve("HEAD", "/v1/links/x")
    assert handler is _handler_a and params == {"link_id": "x"}


def test_a_route_without_head_refuses_it_and_never_advertises_it():
    router = Router()
    router.route("GET", "/v1/keys/{sae_id}/enc_keys", _handler_a, head=False)
    router.route("POST", "/v1/keys/{sae_id}/enc_keys", _handler_b, head=False)
    for method in ("HEAD", "DELETE"):
        error = _status(router, method, "/v1/keys/sae-b/enc_keys")
        assert error.status == 405 and dict(error.headers)["Allow"] == "GET, POST"
    with pytest.raises(ValueError):
        router.route("HEAD", "/v1/keys/{sae_id}/enc_keys", _handler_a, head=False)


@pytest.mark.parametrize("path", [
    "/v1/links/..", "/v1/links/%2e%2E", "/v1/links/.", "/v1/links/../links",
    "/v1/links/a%2Fb", "/v1/links/a%2fb", "/v1/links/a%00b", "/v1/links/a%0Ab",
    "/v1/links/%ff", "/v1/links/%zz", "/v1/links/%4", "v1/links",
])
def test_misleading_paths_are_400(path):
    for _ in range(2):                  # the second time too: a refused path is never remembered as split
        error = _status(_router(), "GET", path)
        assert error.status == 400 and error.message == "malformed request path"


def test_paths_resolve_the_same_when_remembered_or_too_long_to_be():
    from qkdd.http.router import decode_path
    router = _router()
    for link_id in ("a%20b", "x" * 300, "%E2%82%AC" * 40):
        path = f"/v1/links/{link_id}"
        for _ in range(2):
            handler, params = router.resolve("GET", path)
            assert handler is _handler_a and decode_path(path) == "/v1/links/" + params["link_id"]
    assert router.resolve("GET", "/v1/links/a%20b")[1] == {"link_id": "a b"}
    assert router.resolve("GET", "/v1/keys/sae-b/enc_keys")[0] is _handler_b


def test_bad_patterns_and_duplicates_are_rejected():
    router = _router()
    with pytest.raises(ValueError):
        router.get("/v1/links/{link_id}", _handler_b)
    for pattern in ["v1/x", "/v1/{a}/{a}", "/v1/{1x}", "/v1/../x", "/v1/a b"]:
        with pytest.raises(ValueError):
            router.get(pattern, _handler_a)


def test_repr_of_request_and_response_carries_no_credentials_or_keys():
    from qkdd.http import Request

    request = Request(method="POST", path="/v1/keys", query={"token": ["query-secret-1"]},
                      headers=[("authorization", "Bearer auth-secret-2")], body=b'{"psk": "body-secret-3"}',
                      request_id="r1")
    response = Response.json({"keys": [{"key": "a2V5LXNlY3JldC00"}]})
    text = repr(request) + repr(response) + str(request) + str(response)
    assert "POST" in text and "/v1/keys" in text and "status=200" in text
    for secret in ("query-secret-1", "auth-secret-2", "body-secret-3", "a2V5LXNlY3JldC00"):
        assert secret not in text

"""Who may call each route of port 8071 (qkdd.api.callers), on real listeners: state changes need an admin
certificate (api.admin_clients) or, with that list empty, the local host; link and QBER reads follow
api.key_clients or api.admin_clients the same way; and the answer comes on the request head, before the
body is read."""
from __future__ import annotations

import re
import ssl
import time

import httpx
import pytest

from http_support import connect, read_response
from qkdd.api import build_routers
from qkdd.app import App
from qkdd.config import load_config
from qkdd.http import HTTPError, TLSSettings
from qkdd.http.messages import Caller, PeerCertificate
from test_api_key_clients import this_hosts_network_address

LINK = '[[links]]\nlink_id = "sim-1"\nrole = "alice"\ndriver = "sim"\n'
LISTED = '[api]\nadmin_clients = ["cn:sae-a"]\nkey_clients = ["cn:sae-b"]\n'
WRITES = [("POST", "/v1/links/sim-1/calibrate"), ("POST", "/v1/links/sim-1/sim/attack"),
          ("POST", "/v1/links/sim-1/sim/drift"), ("POST", "/v1/links/sim-1/sim/monitor")]
READS = [("GET", "/v1/links"), ("GET", "/v1/links/sim-1/metrics"), ("GET", "/v1/links/sim-1/qber")]
KEYS = [("POST", "/v1/keys/request"), ("GET", "/v1/keys/0190a4c2-0000-7000-8000-000000000000")]


def app_with(tmp_path, config: str) -> App:
    path = tmp_path / "qkdd.toml"
    path.write_text(config + LINK)
    return App.create(load_config(str(path), {}))


def concrete(pattern: str) -> str:
    return re.sub(r"\{[^}]+\}", "sim-1", pattern)


def refused_status(router, method: str, path: str, caller: Caller) -> int | None:
    try:
        router.resolve_route(method, path).access(caller)
    except HTTPError as refused:
        return refused.status
    return None


@pytest.mark.parametrize("config", ["[api]\n", LISTED], ids=["lists empty", "lists set"])
def test_every_api_route_is_closed_to_a_caller_from_the_network_without_a_certificate(tmp_path, config):
    router = build_routers(app_with(tmp_path, config))["api"]
    routes = router.routes()
    assert {(method, concrete(pattern)) for method, pattern in routes} >= set(WRITES + READS)
    stranger = Caller(("192.0.2.7", 40000), None)
    for method, pattern in routes:
        assert refused_status(router, method, concrete(pattern), stranger) in (401, 403), (method, pattern)


def test_with_the_lists_empty_the_local_host_may_call_every_route(tmp_path):
    router = build_routers(app_with(tmp_path, "[api]\n"))["api"]
    for host in ("127.0.0.1", "::1"):
        for method, pattern in router.routes():
            assert refused_status(router, method, concrete(pattern), Caller((host, 1), None)) is None


def test_a_certificate_with_two_common_names_is_no_listed_client(tmp_path):
    router = build_routers(app_with(tmp_path, LISTED))["api"]
    two_names = PeerCertificate("CN=sae-a+CN=sae-b", None, (), (), "00" * 32, common_names=("sae-a", "sae-b"))
    assert refused_status(router, "POST", "/v1/links/sim-1/calibrate", Caller(("127.0.0.1", 1), two_names)) == 403


def _client(pki, name: str | None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(pki.ca_cert_file))
    if name is not None:
        issued = pki.saes.get(name) or pki.kmes[name]
        context.load_cert_chain(str(issued.cert_file), str(issued.key_file))
    return httpx.Client(verify=context, timeout=10)


def test_listed_certificates_decide_over_mutual_tls_wherever_the_caller_is(tmp_path, dev_pki, http_server):
    """sae-a is the admin, sae-b the key client, kme-b a certificate of the same CA listed nowhere; all
    connect from loopback, which is not enough once the lists are set."""
    kme = dev_pki.kmes["kme-a"]
    tls = TLSSettings(str(kme.cert_file), str(kme.key_file), str(dev_pki.ca_cert_file), "optional")
    server = http_server(build_routers(app_with(tmp_path, LISTED))["api"], tls=tls)
    expected = {  # caller -> routes it is refused on (status); all others it passes (then 2xx, 404, 409, 503...)
        None: {route: 401 for route in WRITES + READS + KEYS},
        "kme-b": {route: 403 for route in WRITES + READS + KEYS},
        "sae-a": {route: 403 for route in KEYS},
        "sae-b": {route: 403 for route in WRITES},
    }
    for name, refusals in expected.items():
        with _client(dev_pki, name) as client:
            for method, path in WRITES + READS + KEYS:
                response = client.request(method, server.url(path), json={} if method == "POST" else None)
                wanted = refusals.get((method, path))
                if wanted is not None:
                    assert response.status_code == wanted, (name, method, path, response.text)
                else:
                    assert response.status_code not in (401, 403), (name, method, path, response.text)
    with _client(dev_pki, "sae-b") as client:
        assert [link["link_id"] for link in client.get(server.url("/v1/links")).json()["links"]] == ["sim-1"]


def test_a_plain_listener_on_every_address_takes_orders_and_shows_links_to_this_host_only(tmp_path, http_server):
    server = http_server(build_routers(app_with(tmp_path, "[api]\n"))["api"], host="0.0.0.0")
    network = this_hosts_network_address()
    for method, path in WRITES + READS:
        remote = httpx.request(method, f"http://{network}:{server.port}{path}", json={} if method == "POST" else None)
        assert remote.status_code == 403, (method, path)
        local = httpx.request(method, f"http://127.0.0.1:{server.port}{path}", json={} if method == "POST" else None)
        assert local.status_code not in (401, 403), (method, path, local.text)
    assert httpx.get(f"http://127.0.0.1:{server.port}/v1/links").json()["links"][0]["link_id"] == "sim-1"


def test_an_order_from_the_network_is_refused_before_its_body_arrives(tmp_path, http_server):
    server = http_server(build_routers(app_with(tmp_path, "[api]\n"))["api"], host="0.0.0.0")
    with connect((this_hosts_network_address(), server.port)) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/links/sim-1/sim/attack HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1048576\r\n\r\n")
        response = read_response(sock)
        assert response.status == 403 and time.monotonic() - started < 1.0
        assert response.json["message"].startswith("admin route")
    assert server.server.body_budget.peak_bytes == 0

"""Who may take keys over /v1 (qkdd.api.callers), on a real listener: with `api.key_clients` empty only
clients on the daemon's own host (a daemon on every address over plain HTTP, as in the example config,
hands no key to the network); with the list set, only the certificates it names (401 without one, 403
for another), wherever they connect from."""
from __future__ import annotations

import socket
import ssl
import uuid

import httpx
import pytest

from qkdd.api import build_routers
from qkdd.api.callers import require_key_client
from qkdd.app import App
from qkdd.config import load_config
from qkdd.http import TLSSettings
from qkdd.http.messages import HTTPError, Request


def app_with(tmp_path, api_extra: str = "") -> App:
    path = tmp_path / "qkdd.toml"
    path.write_text(f"[api]\n{api_extra}\n")
    return App.create(load_config(str(path), {}))


def this_hosts_network_address() -> str:
    """The address this host sends from on its default route (no packet leaves: a UDP connect only
    picks the route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("203.0.113.1", 9))
        except OSError:
            pytest.skip("this host has no network address besides loopback")
        return probe.getsockname()[0]


def request_from(client_host: str) -> Request:
    return Request(method="GET", path="/v1/keys/x", query={}, headers=[], body=b"", request_id="r",
                   client=(client_host, 40000))


def test_with_no_key_clients_loopback_callers_pass_and_others_get_403():
    for host in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        require_key_client(request_from(host), ())
    for host in ("192.0.2.7", "::ffff:192.0.2.7", "2001:db8::1", "not an address"):
        with pytest.raises(HTTPError) as refused:
            require_key_client(request_from(host), ())
        assert refused.value.status == 403 and "api.key_clients" in str(refused.value.details)


def test_a_plain_http_listener_on_every_address_answers_keys_to_loopback_only(tmp_path, http_server):
    server = http_server(build_routers(app_with(tmp_path))["api"], host="0.0.0.0")
    port = server.port
    unknown_key = f"/v1/keys/{uuid.uuid4()}"
    local = httpx.get(f"http://127.0.0.1:{port}{unknown_key}")
    assert local.status_code == 404                                   # let through; there is no such key
    remote = httpx.get(f"http://{this_hosts_network_address()}:{port}{unknown_key}")
    assert remote.status_code == 403 and remote.json()["message"].startswith("key route")
    refused_request = httpx.post(f"http://{this_hosts_network_address()}:{port}/v1/keys/request",
                                 json={"bits": 256, "link_id": "sim-1"})
    assert refused_request.status_code == 403
    # Link reads and state changes are not for the network either (their own tests: test_api_access.py).
    network = this_hosts_network_address()
    assert httpx.get(f"http://{network}:{port}/v1/links/sim-1/metrics").status_code == 403
    assert httpx.post(f"http://{network}:{port}/v1/links/sim-1/calibrate").status_code == 403


def test_listed_key_clients_need_their_certificate_even_on_loopback(tmp_path, dev_pki, http_server):
    app = app_with(tmp_path, 'key_clients = ["cn:sae-a"]')
    kme = dev_pki.kmes["kme-a"]
    tls = TLSSettings(str(kme.cert_file), str(kme.key_file), str(dev_pki.ca_cert_file), "optional")
    server = http_server(build_routers(app)["api"], tls=tls)
    unknown_key = server.url(f"/v1/keys/{uuid.uuid4()}")

    def client(sae: str | None) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(dev_pki.ca_cert_file))
        if sae is not None:
            context.load_cert_chain(str(dev_pki.saes[sae].cert_file), str(dev_pki.saes[sae].key_file))
        return httpx.Client(verify=context)

    for sae, status in ((None, 401), ("sae-b", 403), ("sae-a", 404)):
        with client(sae) as http:
            assert http.get(unknown_key).status_code == status, sae


def test_key_clients_entries_are_checked(tmp_path):
    from tests.daemon_support import run_qkdd

    path = tmp_path / "qkdd.toml"
    path.write_text('[api]\nkey_clients = ["sae-a"]\n')
    result = run_qkdd("check-config", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith("config error: api.key_clients: entry 0 must be")

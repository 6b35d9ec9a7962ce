"""Admin-only sim-control routes over a real mTLS listener: non-admins are refused (401 without a client
certificate, 403 with one not listed in api.admin_clients), admins switch attacks, drifts and Bob's
monitor on the device objects the App holds."""
from __future__ import annotations

import hashlib
import ssl

import httpx
import pytest

from qkdd.api import build_routers
from qkdd.app import App
from qkdd.config import load_config
from qkdd.hal.sim.driver import device_for
from qkdd.hal.sim.params import Attack, Drift
from qkdd.http import TLSSettings


def _client(pki, sae=None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(pki.ca_cert_file))
    if sae is not None:
        context.load_cert_chain(str(sae.cert_file), str(sae.key_file))
    return httpx.Client(verify=context)


@pytest.fixture
def setup(tmp_path, dev_pki, http_server):
    kme = dev_pki.kmes["kme-a"]
    fingerprint = hashlib.sha256(ssl.PEM_cert_to_DER_cert(dev_pki.saes["sae-b"].cert_file.read_text())).hexdigest()
    path = tmp_path / "qkdd.toml"
    # sae-a is an admin by common name; sae-b only by a fingerprint of another certificate (not admin)
    path.write_text(f'[api]\nadmin_clients = ["cn:sae-a", "sha256:{"0" * 64}"]\n'
                    '[[links]]\nlink_id = "sim-a"\nrole = "alice"\ndriver = "sim"\ndevice_addr = "127.0.0.1:0"\n'
                    '[[links]]\nlink_id = "sim-b"\nrole = "bob"\ndriver = "sim"\ndevice_addr = "127.0.0.1:9"\n'
                    '[[links]]\nlink_id = "idle"\nrole = "alice"\ndriver = "sim"\n')
    app = App.create(load_config(str(path), {}))
    for link_id in ("sim-a", "sim-b"):
        app.devices[link_id] = device_for(app.config.link(link_id))
    tls = TLSSettings(str(kme.cert_file), str(kme.key_file), str(dev_pki.ca_cert_file), "optional")
    server = http_server(build_routers(app)["api"], tls=tls)
    return app, server, fingerprint


def test_non_admins_are_refused_before_anything_changes(setup, dev_pki):
    app, server, _ = setup
    alice = app.devices["sim-a"]
    for client, status in ((_client(dev_pki), 401), (_client(dev_pki, dev_pki.saes["sae-b"]), 403)):
        with client:
            for method, path, body in (("GET", "/v1/links/sim-a/sim", None),
                                       ("POST", "/v1/links/sim-a/sim/attack", {"attack": "intercept-resend:1"}),
                                       ("POST", "/v1/links/sim-a/sim/drift", {"misalignment": 0.2}),
                                       ("POST", "/v1/links/sim-b/sim/monitor", {"enabled": True}),
                                       ("POST", "/v1/links/nowhere/sim/attack", {"attack": "pns"})):
                response = client.request(method, server.url(path), json=body)
                assert response.status_code == status, (path, response.text)
                assert "admin" in response.json()["message"]
    assert alice.attack == Attack() and alice.drift == Drift()
    assert app.devices["sim-b"].monitor_enabled is False


def test_admin_switches_attack_drift_and_monitor(setup, dev_pki):
    app, server, _ = setup
    alice, bob = app.devices["sim-a"], app.devices["sim-b"]
    with _client(dev_pki, dev_pki.saes["sae-a"]) as client:
        response = client.post(server.url("/v1/links/sim-a/sim/attack"), json={"attack": "intercept-resend:0.5"})
        assert response.status_code == 200 and response.json()["attack"] == "intercept-resend:0.5"
        assert alice.attack == Attack("intercept-resend", 0.5)
        response = client.post(server.url("/v1/links/sim-a/sim/drift"), json={"extra_loss_db": 3, "misalignment": 0.02})
        assert response.json()["drift"] == {"extra_loss_db": 3.0, "misalignment": 0.02}
        response = client.post(server.url("/v1/links/sim-a/sim/drift"), json={"misalignment": 0})
        assert alice.drift == Drift(extra_loss_db=3.0, misalignment=0.0)
        response = client.post(server.url("/v1/links/sim-b/sim/monitor"), json={"enabled": True, "threshold_w": 1e-8})
        assert response.status_code == 200 and bob.monitor_enabled and bob.monitor_threshold_w == 1e-8
        status = client.get(server.url("/v1/links/sim-a/sim")).json()
        assert status["role"] == "alice" and status["attack"] == "intercept-resend:0.5"
        assert client.get(server.url("/v1/links/sim-b/sim")).json()["monitor"]["enabled"] is True

        bad = [("/v1/links/sim-a/sim/attack", {"attack": "eavesdrop"}, 400, "invalid attack"),
               ("/v1/links/sim-a/sim/attack", {"attack": 3}, 400, "attack must be a string"),
               ("/v1/links/sim-a/sim/attack", {"attack": "none", "x": 1}, 400, "unknown fields"),
               ("/v1/links/sim-a/sim/drift", {"misalignment": 0.9}, 400, "invalid drift"),
               ("/v1/links/sim-a/sim/drift", {"extra_loss_db": "3"}, 400, "finite number"),
               ("/v1/links/sim-b/sim/monitor", {"enabled": "yes"}, 400, "true or false"),
               ("/v1/links/sim-b/sim/attack", {"attack": "pns"}, 409, "Alice's end"),
               ("/v1/links/sim-a/sim/monitor", {"enabled": True}, 409, "Bob's end"),
               ("/v1/links/idle/sim/attack", {"attack": "pns"}, 409, "no simulated device"),
               ("/v1/links/nowhere/sim/attack", {"attack": "pns"}, 404, "unknown link")]
        for path, body, status_code, message in bad:
            response = client.post(server.url(path), json=body)
            assert response.status_code == status_code, (path, body, response.text)
            assert message in response.json()["message"]
    assert alice.attack == Attack("intercept-resend", 0.5)      # refused requests changed nothing


def test_admin_by_fingerprint(setup, dev_pki, tmp_path, http_server):
    app, _, fingerprint = setup
    kme = dev_pki.kmes["kme-a"]
    path = tmp_path / "fp.toml"
    path.write_text(f'[api]\nadmin_clients = ["sha256:{fingerprint}"]\n'
                    '[[links]]\nlink_id = "sim-a"\nrole = "alice"\ndriver = "sim"\n')
    app2 = App.create(load_config(str(path), {}))
    app2.devices["sim-a"] = app.devices["sim-a"]
    tls = TLSSettings(str(kme.cert_file), str(kme.key_file), str(dev_pki.ca_cert_file), "required")
    server = http_server(build_routers(app2)["api"], tls=tls)
    with _client(dev_pki, dev_pki.saes["sae-b"]) as client:
        assert client.post(server.url("/v1/links/sim-a/sim/attack"), json={"attack": "pns"}).status_code == 200
    with _client(dev_pki, dev_pki.saes["sae-a"]) as client:
        assert client.post(server.url("/v1/links/sim-a/sim/attack"), json={"attack": "none"}).status_code == 403
    assert app.devices["sim-a"].attack == Attack("pns")


def test_admin_clients_config_is_checked(tmp_path):
    from qkdd.config import ConfigError

    path = tmp_path / "bad.toml"
    path.write_text('[api]\nadmin_clients = ["sae-a"]\n')
    with pytest.raises(ConfigError, match="api.admin_clients: entry 0 must be"):
        load_config(str(path), {})

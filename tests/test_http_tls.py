"""TLS listeners over real sockets: client certificates none/optional/required, peer certificate details,
and handshakes that fail (no certificate, untrusted CA, garbage, plain HTTP, silence) without tracebacks."""
import hashlib
import logging
import re
import ssl
import time

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from http_support import ResponseReader, connect, is_closed, make_router, read_response, read_until_closed, wait_for
from qkdd.http import HTTPLimits, TLSSettings
from qkdd.http.tls import server_context
from qkdd.pki import init_pki, issue_sae_certificate, load_ca, write_issued

GET_WHOAMI = b"GET /whoami HTTP/1.1\r\nHost: kme-a\r\n\r\n"


def _tls(pki, mode):
    kme = pki.kmes["kme-a"]
    return TLSSettings(str(kme.cert_file), str(kme.key_file),
                       str(pki.ca_cert_file) if mode != "none" else None, mode)


def _client_context(pki, sae=None, maximum_version=None):
    context = ssl.create_default_context(cafile=str(pki.ca_cert_file))
    if sae is not None:
        context.load_cert_chain(str(sae.cert_file), str(sae.key_file))
    if maximum_version is not None:
        context.maximum_version = maximum_version
    return context


def _tls_connect(server, context):
    sock = connect(server.address)
    return context.wrap_socket(sock, server_hostname="127.0.0.1")


def _no_http_answer(server, context):
    """True when the server gives no HTTP response to a TLS client (handshake or first read fails)."""
    try:
        with _tls_connect(server, context) as tls:
            tls.sendall(GET_WHOAMI)
            return tls.recv(1024) == b""
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True


def _handshake_log_records(caplog):
    return [record for record in caplog.records
            if record.name == "qkdd.http" and "TLS handshake" in record.getMessage()]


def test_required_client_cert_peer_details_reach_the_handler(http_server, dev_pki):
    server = http_server(make_router(), tls=_tls(dev_pki, "required"))
    sae = dev_pki.saes["sae-a"]
    with httpx.Client(verify=_client_context(dev_pki, sae)) as client:
        response = client.get(server.url("/whoami"))
    cert = response.json()["peer_cert"]
    expected_fingerprint = hashlib.sha256(ssl.PEM_cert_to_DER_cert(sae.cert_file.read_text())).hexdigest()
    assert cert == {"subject": "CN=sae-a", "common_name": "sae-a", "san_uris": [], "san_dns": [],
                    "sha256_fingerprint": expected_fingerprint}


def test_san_uris_reach_the_handler(http_server, dev_pki, tmp_path):
    server = http_server(make_router(), tls=_tls(dev_pki, "required"))
    ca_cert, ca_key = load_ca(dev_pki)
    uris = ("spiffe://qkd.example/sae/sae-u", "urn:etsi:qkd:sae:sae-u")
    sae = write_issued(tmp_path, "sae-u", *issue_sae_certificate(ca_cert, ca_key, "sae-u", san_uris=uris))
    with httpx.Client(verify=_client_context(dev_pki, sae)) as client:
        cert = client.get(server.url("/whoami")).json()["peer_cert"]
    assert cert["san_uris"] == list(uris) and cert["common_name"] == "sae-u" and cert["san_dns"] == []


def test_kme_certificate_as_client_shows_san_dns(http_server, dev_pki):
    server = http_server(make_router(), tls=_tls(dev_pki, "required"))
    with httpx.Client(verify=_client_context(dev_pki, dev_pki.kmes["kme-b"])) as client:
        cert = client.get(server.url("/whoami")).json()["peer_cert"]
    assert cert["common_name"] == "kme-b" and cert["san_dns"] == ["kme-b", "localhost"]


def test_tls13_is_negotiated(http_server, dev_pki):
    server = http_server(make_router(), tls=_tls(dev_pki, "none"))
    with _tls_connect(server, _client_context(dev_pki)) as tls:
        assert tls.version() == "TLSv1.3"
        assert tls.selected_alpn_protocol() in (None, "http/1.1")
        tls.sendall(GET_WHOAMI)
        assert read_response(tls).json == {"peer_cert": None}


@pytest.mark.parametrize("maximum_version", [None, ssl.TLSVersion.TLSv1_2])
def test_required_client_cert_missing_is_refused_quietly(http_server, dev_pki, caplog, maximum_version):
    server = http_server(make_router(), tls=_tls(dev_pki, "required"))
    with caplog.at_level(logging.INFO, logger="qkdd.http"):
        assert _no_http_answer(server, _client_context(dev_pki, maximum_version=maximum_version))
        assert wait_for(lambda: _handshake_log_records(caplog))
    [record] = _handshake_log_records(caplog)
    assert "failed" in record.getMessage() and record.exc_info is None
    # And a client with a certificate is still served afterwards.
    with httpx.Client(verify=_client_context(dev_pki, dev_pki.saes["sae-b"])) as client:
        assert client.get(server.url("/whoami")).json()["peer_cert"]["common_name"] == "sae-b"


def _refusal_reason(server, context):
    """The OpenSSL reason of the alert a client receives when the server refuses its handshake."""
    with pytest.raises(ssl.SSLError) as refused:
        with _tls_connect(server, context) as tls:
            tls.sendall(GET_WHOAMI)
            tls.recv(1024)       # TLS 1.3: the server judges the client certificate after our Finished
    return refused.value.reason


def test_missing_client_cert_gets_the_tls_alert_not_end_of_stream(http_server, dev_pki, tmp_path):
    server = http_server(make_router(), tls=_tls(dev_pki, "required"))
    assert _refusal_reason(server, _client_context(dev_pki)) == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    tls12 = _client_context(dev_pki, maximum_version=ssl.TLSVersion.TLSv1_2)
    assert _refusal_reason(server, tls12) == "SSLV3_ALERT_HANDSHAKE_FAILURE"
    rogue = init_pki(tmp_path / "rogue", [], ["sae-a"])
    assert _refusal_reason(server, _client_context(dev_pki, rogue.saes["sae-a"])) == "TLSV1_ALERT_UNKNOWN_CA"


def test_client_cert_from_another_ca_is_refused(http_server, dev_pki, tmp_path):
    server = http_server(make_router(), tls=_tls(dev_pki, "required"))
    rogue = init_pki(tmp_path / "rogue", [], ["sae-a"])
    assert _no_http_answer(server, _client_context(dev_pki, rogue.saes["sae-a"]))


def test_optional_client_cert_works_with_and_without(http_server, dev_pki, tmp_path):
    server = http_server(make_router(), tls=_tls(dev_pki, "optional"))
    with httpx.Client(verify=_client_context(dev_pki)) as client:
        assert client.get(server.url("/whoami")).json() == {"peer_cert": None}
    with httpx.Client(verify=_client_context(dev_pki, dev_pki.saes["sae-a"])) as client:
        assert client.get(server.url("/whoami")).json()["peer_cert"]["common_name"] == "sae-a"
    rogue = init_pki(tmp_path / "rogue", [], ["sae-a"])
    assert _no_http_answer(server, _client_context(dev_pki, rogue.saes["sae-a"]))   # optional, but verified


def test_no_client_cert_mode_ignores_client_certs(http_server, dev_pki):
    server = http_server(make_router(), tls=_tls(dev_pki, "none"))
    with httpx.Client(verify=_client_context(dev_pki, dev_pki.saes["sae-a"])) as client:
        assert client.get(server.url("/whoami")).json() == {"peer_cert": None}


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 64 + b"\xff" * 64,
                                     b"\x16\x03\x01\x00\x05hello"])
def test_garbage_and_plain_http_to_tls_port_close_with_one_log_line(http_server, dev_pki, caplog, garbage):
    server = http_server(make_router(), tls=_tls(dev_pki, "required"))
    with caplog.at_level(logging.DEBUG, logger="qkdd.http"):
        with connect(server.address) as sock:
            sock.sendall(garbage)
            received, elapsed_s = read_until_closed(sock, 5.0)
        assert wait_for(lambda: _handshake_log_records(caplog))
    assert b"HTTP/1.1" not in received and elapsed_s < 2.0
    [record] = _handshake_log_records(caplog)
    assert record.exc_info is None and "Traceback" not in caplog.text
    assert all(record.levelno < logging.ERROR for record in caplog.records)


def test_a_flood_of_failed_tls_handshakes_is_rate_limited_in_the_log(http_server, dev_pki, caplog):
    from qkdd.log_limit import DEFAULT_BURST, DEFAULT_PER_S

    server = http_server(make_router(), tls=_tls(dev_pki, "required"))
    flood = 60
    with caplog.at_level(logging.INFO, logger="qkdd.http"):
        started_s = time.monotonic()
        for _ in range(flood):
            with connect(server.address) as sock:
                sock.sendall(b"\x00" * 64)
                read_until_closed(sock, 5.0)
        elapsed_s = time.monotonic() - started_s
        assert wait_for(lambda: len(_handshake_log_records(caplog)) >= DEFAULT_BURST)
        time.sleep(0.2)                                 # the last connections' log calls have run
        logged = len(_handshake_log_records(caplog))
        assert DEFAULT_BURST <= logged <= DEFAULT_BURST + elapsed_s * DEFAULT_PER_S + 1
        time.sleep(1.5 / DEFAULT_PER_S)
        with connect(server.address) as sock:
            sock.sendall(b"\x00" * 64)
            read_until_closed(sock, 5.0)
        assert wait_for(lambda: len(_handshake_log_records(caplog)) == logged + 1)
    # every refusal held back is counted, in one summary or, on a slow machine, several
    held_back = re.findall(r"(\d+) similar messages suppressed \(tls-handshake-failed\)", caplog.text)
    assert held_back and sum(map(int, held_back)) == flood - logged, held_back


def test_the_suppressed_count_of_a_flood_is_logged_though_no_further_handshake_fails(http_server, dev_pki, caplog,
                                                                                    monkeypatch):
    from qkdd import log_limit

    monkeypatch.setattr(log_limit, "SUMMARY_INTERVAL_S", 0.3)
    server = http_server(make_router(), tls=_tls(dev_pki, "required"))
    flood = log_limit.DEFAULT_BURST + 15
    with caplog.at_level(logging.INFO, logger="qkdd.http"):
        for _ in range(flood):
            with connect(server.address) as sock:
                sock.sendall(b"\x00" * 64)
                read_until_closed(sock, 5.0)
        summaries = lambda: [r.getMessage() for r in caplog.records if "similar messages suppressed" in r.getMessage()]  # noqa: E731
        assert wait_for(lambda: sum(int(text.split()[0]) for text in summaries())
                        + len(_handshake_log_records(caplog)) == flood)
        assert summaries() and all(text.endswith("(tls-handshake-failed)") for text in summaries())


def test_silent_client_hits_handshake_timeout(http_server, dev_pki):
    server = http_server(make_router(), tls=_tls(dev_pki, "required"),
                         limits=HTTPLimits(tls_handshake_timeout_s=0.5))
    with connect(server.address) as sock:
        started = time.monotonic()
        assert is_closed(sock, 3.0)
        assert 0.4 < time.monotonic() - started < 2.0


def test_inconsistent_tls_settings_are_rejected(dev_pki):
    kme = dev_pki.kmes["kme-a"]
    with pytest.raises(ValueError, match="client_ca_file"):
        server_context(TLSSettings(str(kme.cert_file), str(kme.key_file), None, "required"))
    with pytest.raises(ValueError, match="client_cert"):
        server_context(TLSSettings(str(kme.cert_file), str(kme.key_file), str(dev_pki.ca_cert_file), "maybe"))
    with pytest.raises(ssl.SSLError):
        server_context(TLSSettings(str(kme.cert_file), str(dev_pki.kmes["kme-b"].key_file)))
    context = server_context(TLSSettings(str(kme.cert_file), str(kme.key_file)))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_encrypted_key_is_an_error_not_a_password_prompt(dev_pki, tmp_path):
    key = serialization.load_pem_private_key(dev_pki.kmes["kme-a"].key_file.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"pass phrase")))
    with pytest.raises(ValueError, match="encrypted"):
        server_context(TLSSettings(str(dev_pki.kmes["kme-a"].cert_file), str(encrypted)))


def test_limits_and_keep_alive_apply_over_tls(http_server, dev_pki):
    server = http_server(make_router(), tls=_tls(dev_pki, "required"), limits=HTTPLimits(max_body_bytes=100))
    with _tls_connect(server, _client_context(dev_pki, dev_pki.saes["sae-a"])) as tls:
        reader = ResponseReader(tls)
        for _ in range(3):
            tls.sendall(GET_WHOAMI)
            assert reader.read().json["peer_cert"]["common_name"] == "sae-a"
        tls.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n")
        assert reader.read().status == 413


def test_excess_tls_connection_is_closed_at_once(http_server, dev_pki):
    server = http_server(make_router(), tls=_tls(dev_pki, "required"), limits=HTTPLimits(max_connections=1))
    context = _client_context(dev_pki, dev_pki.saes["sae-a"])
    with _tls_connect(server, context) as held:
        started = time.monotonic()
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            _tls_connect(server, context)
        assert time.monotonic() - started < 1.0
        held.sendall(GET_WHOAMI)
        assert read_response(held).json["peer_cert"]["common_name"] == "sae-a"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_below_1_2_is_refused(http_server, dev_pki):
    server = http_server(make_router(), tls=_tls(dev_pki, "none"))
    context = _client_context(dev_pki)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")     # let the client offer TLS 1.1 at all
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        _tls_connect(server, context)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with _tls_connect(server, context) as tls:
        assert tls.version() == "TLSv1.2"

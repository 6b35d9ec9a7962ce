"""ETSI GS QKD 014 routes over a real mTLS listener and a real key store: a caller that is not an SAE of
this KME is refused (401) on the request head, before its body is read; a certificate whose subject has
two CNs names no SAE (401), rather than the first of them; Get status with a body is 400."""
from __future__ import annotations

import datetime
import os
import ssl
import time

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from http_support import connect, read_response
from qkdd.api.etsi014 import register
from qkdd.http import Router, TLSSettings
from qkdd.keystore import KeyStore
from qkdd.kme.ledger import Ledger
from qkdd.kme.service import KmeService
from qkdd.pki import load_ca, new_private_key, write_issued
from tests.test_kme_take_block import CONFIG

STATUS = "/api/v1/keys/sae-b/status"


@pytest.fixture
def kme(tmp_path, dev_pki, http_server):
    store = KeyStore(str(tmp_path / "keys.db"), os.urandom(32))
    router = Router()
    register(router, KmeService(CONFIG, store, Ledger(database=store.database)))
    kme = dev_pki.kmes["kme-a"]
    tls = TLSSettings(str(kme.cert_file), str(kme.key_file), str(dev_pki.ca_cert_file), "optional")
    return http_server(router, tls=tls)


def client(pki, issued=None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(pki.ca_cert_file))
    if issued is not None:
        context.load_cert_chain(str(issued.cert_file), str(issued.key_file))
    return httpx.Client(verify=context, timeout=10)


def two_common_names(pki, directory):
    """A client certificate from the listener's CA whose subject is CN=sae-a + CN=sae-b."""
    ca_cert, ca_key = load_ca(pki)
    key = new_private_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sae-a"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "sae-b")])
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                   .sign(ca_key, hashes.SHA256()))
    return write_issued(directory, "two-cns", certificate, key)


def test_get_status_with_a_body_is_400_and_without_one_200(kme, dev_pki):
    with client(dev_pki, dev_pki.saes["sae-a"]) as sae_a:
        plain = sae_a.get(kme.url(STATUS))
        assert plain.status_code == 200 and plain.json()["slave_SAE_ID"] == "sae-b"
        with_body = sae_a.request("GET", kme.url(STATUS), json={"number": 1})
        assert with_body.status_code == 400
        assert with_body.json() == {"message": "bad request format",
                                    "details": [{"body": "Get status carries no body"}]}


def test_a_certificate_with_two_common_names_is_refused_not_taken_as_its_first(kme, dev_pki, tmp_path):
    with client(dev_pki, two_common_names(dev_pki, tmp_path)) as ambiguous:
        for method, path in (("GET", STATUS), ("POST", "/api/v1/keys/sae-b/enc_keys"),
                             ("GET", "/api/v1/keys/sae-b/dec_keys?key_ID=x")):
            response = ambiguous.request(method, kme.url(path))
            assert response.status_code == 401, (path, response.text)
            assert response.json()["details"] == [{"reason": "the client certificate's subject has more than one CN"}]


def test_a_caller_that_is_no_sae_of_this_kme_is_refused_before_its_body_is_read(kme, dev_pki):
    for certificate in (None, dev_pki.saes["sae-b"]):            # none, and an SAE another KME serves
        context = ssl.create_default_context(cafile=str(dev_pki.ca_cert_file))
        if certificate is not None:
            context.load_cert_chain(str(certificate.cert_file), str(certificate.key_file))
        with connect(kme.address) as raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            started = time.monotonic()
            tls.sendall(b"POST /api/v1/keys/sae-a/enc_keys HTTP/1.1\r\nHost: kme-a\r\n"
                        b"Content-Length: 1048576\r\n\r\n")        # the body never comes
            response = read_response(tls)
            assert response.status == 401 and time.monotonic() - started < 1.0
            assert response.getheader("connection") == "close"
    assert kme.server.body_budget.peak_bytes == 0

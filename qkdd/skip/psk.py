"""SKIP's TLS with pre-shared keys: the routers are the clients and each has an identity and a PSK.

Python 3.11's ssl module has no PSK callbacks (they arrive in 3.13) and pyOpenSSL has none either, so the
server callback comes from sslpsk3 (PyPI; maintained, 3.7-3.14, the standard library's own callbacks from
3.13 on): it installs OpenSSL's SSL_set_psk_server_callback on the ssl module's SSL object, so the context
stays a plain ssl.SSLContext that trio's SSLStream drives over memory BIOs.

Suites (draft-cisco-skip-02 section 3, and what Cisco IOS XE routers offer): TLS 1.2 PSK-AES256-GCM-SHA384
and DHE-PSK-AES256-GCM-SHA384 (forward secret, over the RFC 7919 ffdhe2048 group). TLS 1.3 too, where the
stack allows: OpenSSL hands the same callback's PSK to a TLS 1.3 client as an external PSK bound to
SHA-256 (SSL_CTX_set_psk_server_callback(3)), so a TLS 1.3 router gets TLS_AES_128_GCM_SHA256 or
TLS_CHACHA20_POLY1305_SHA256 (with (EC)DHE when it offers psk_dhe_ke); one that offers only SHA-384 suites
is refused (Python 3.11 cannot set TLS 1.3 suites or a find-session callback).

An identity this end does not know gets no PSK, which fails the handshake: a wrong identity or PSK never
reaches HTTP. The PSKs never appear in logs or errors.
"""
from __future__ import annotations

import os
import ssl
import tempfile

from sslpsk3 import SSLPSKContext

CIPHERS = "PSK-AES256-GCM-SHA384:DHE-PSK-AES256-GCM-SHA384"

# RFC 7919 Appendix A.1, ffdhe2048, as DH PARAMETERS (what `openssl genpkey -genparam -algorithm DH
# -pkeyopt group:ffdhe2048` writes).
FFDHE2048_PEM = b"""-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


class _PskObject(ssl.SSLObject):
    """sslpsk3 installs its callbacks on every do_handshake() call, and re-arms the server's accept state
    with them; trio calls do_handshake() again after each read of a handshake in progress, which would
    restart the handshake. So: once per connection."""

    _psk_installed = False

    def do_handshake(self) -> None:
        if not self._psk_installed:
            self.context.setup_psk_callbacks(self)
            self._psk_installed = True
        super().do_handshake()


def psk_server_context(psks: dict[str, bytes], identity_hint: str = "qkdd") -> ssl.SSLContext:
    """A server context that accepts the clients of `psks` (identity -> PSK) and no one else."""
    context = SSLPSKContext(ssl.PROTOCOL_TLS_SERVER)
    context.sslobject_class = _PskObject
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    with tempfile.NamedTemporaryFile(suffix=".pem") as params:
        params.write(FFDHE2048_PEM)
        params.flush()
        context.load_dh_params(params.name)
    known = dict(psks)

    def server_psk(identity: str | None) -> bytes:
        return known.get(identity or "", b"")          # empty: OpenSSL fails the handshake

    context.set_psk_server_callback(server_psk, identity_hint=identity_hint)
    return context


def psk_client_context(identity: str, psk: bytes, cipher: str = "PSK-AES256-GCM-SHA384") -> ssl.SSLContext:
    """A router's side (tests, benchmarks): TLS 1.2 with `cipher`, identity and PSK. (sslpsk3's client side
    fails TLS 1.3 on Python 3.11; the tests' TLS 1.3 client is `openssl s_client`.)"""
    context = SSLPSKContext(ssl.PROTOCOL_TLS_CLIENT)
    context.sslobject_class = _PskObject
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(cipher)
    context.set_psk_client_callback(lambda hint: (identity, psk))
    return context


def new_psk_hex() -> str:
    return os.urandom(32).hex()

"""TLS for the HTTP listeners: the server SSL context and the peer certificate handlers see.

TLS 1.2 is the floor and 1.3 is preferred (OpenSSL picks the highest both sides support); TLS 1.2
is limited to forward-secret AEAD suites. Client certificates are per listener: none, optional or
required, verified against `client_ca_file`.
"""
from __future__ import annotations

import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from .messages import PeerCertificate, TLSSettings

_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
_VERIFY_MODES = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def server_context(settings: TLSSettings) -> ssl.SSLContext:
    """An SSLContext for a listener; ValueError for inconsistent settings, OSError/SSLError for bad files."""
    if settings.client_cert not in _VERIFY_MODES:
        raise ValueError(f"client_cert must be one of none, optional, required, not {settings.client_cert!r}")
    if settings.client_cert != "none" and not settings.client_ca_file:
        raise ValueError(f"client_cert = {settings.client_cert!r} needs client_ca_file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    # Without a password callback OpenSSL would prompt on the terminal for an encrypted key and hang the daemon.
    context.load_cert_chain(settings.cert_file, settings.key_file, password=_refuse_encrypted_key)
    if settings.client_cert != "none":
        context.load_verify_locations(cafile=settings.client_ca_file)
    context.verify_mode = _VERIFY_MODES[settings.client_cert]
    return context


def _refuse_encrypted_key() -> bytes:
    raise ValueError("the TLS private key is encrypted; give qkdd an unencrypted key file (mode 0600)")


def peer_certificate(ssl_object: ssl.SSLObject) -> PeerCertificate | None:
    """The verified client certificate of a finished handshake, or None when the client sent none."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    return parse_certificate(der)


def parse_certificate(der: bytes) -> PeerCertificate:
    """Subject, CN (only when the subject has exactly one), SAN URIs and DNS names, and the SHA-256
    fingerprint of a DER certificate."""
    certificate = x509.load_der_x509_certificate(der)
    common_names = tuple(_text(attribute.value)
                         for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        san_uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        san_dns = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        san_uris, san_dns = (), ()
    return PeerCertificate(
        subject=certificate.subject.rfc4514_string(),
        # A subject with two CNs names no one: taking the first would let whoever chose the order choose
        # the identity.
        common_name=common_names[0] if len(common_names) == 1 else None,
        san_uris=san_uris,
        san_dns=san_dns,
        sha256_fingerprint=certificate.fingerprint(hashes.SHA256()).hex(),
        common_names=common_names,
    )


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def handshake_failure_reason(exc: BaseException) -> str:
    """A short, log-safe reason for a failed handshake (the OpenSSL reason code where there is one)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return cause.reason or type(cause).__name__
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__

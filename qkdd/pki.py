"""A development PKI: one CA, KME server certificates and SAE client certificates (EC P-256).

For demos and tests, not production: keys are written unencrypted (0600). KME certificates carry the
KME name, `localhost` and 127.0.0.1 as SANs and both serverAuth and clientAuth, so daemons can also
use them as client certificates towards each other. SAE certificates have subject CN = SAE name.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALID_DAYS = 3650
DEFAULT_VALID_DAYS = 825
CLOCK_SKEW = datetime.timedelta(minutes=5)     # certificates are valid from a little before "now"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_NAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_PRIVATE_MODE = 0o600
_PUBLIC_MODE = 0o644


class PKIError(Exception):
    """Invalid names or a target directory that already holds a PKI."""


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key as PEM files."""

    name: str
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class DevPKI:
    """The files `init_pki` wrote."""

    directory: Path
    ca_cert_file: Path
    ca_key_file: Path
    kmes: dict[str, Issued] = field(default_factory=dict)
    saes: dict[str, Issued] = field(default_factory=dict)


def check_name(name: str, what: str) -> str:
    """A KME or SAE name must be a DNS name (it becomes a SAN, a CN and part of a file name)."""
    if len(name) > 253 or not _NAME_RE.match(name):
        raise PKIError(f"{what} name {name!r} is not valid: use letters, digits, '-' and '.', "
                       "like a DNS name (at most 63 characters per label)")
    return name


def new_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def create_ca(common_name: str = "qkdd development CA", valid_days: int = CA_VALID_DAYS
              ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = new_private_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qkdd development")])
    now = datetime.datetime.now(datetime.timezone.utc)
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def _issue(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, common_name: str,
           usages: list[x509.ObjectIdentifier], san: list[x509.GeneralName], valid_days: int
           ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = new_private_key()
    public_key = key.public_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key_id = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject).public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def issue_kme_certificate(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, name: str,
                          valid_days: int = DEFAULT_VALID_DAYS
                          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Server (and daemon-to-daemon client) certificate; SANs: DNS name, DNS localhost, IP 127.0.0.1."""
    check_name(name, "KME")
    dns_names = [name] if name == "localhost" else [name, "localhost"]
    san: list[x509.GeneralName] = [x509.DNSName(dns) for dns in dns_names]
    san.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    return _issue(ca_cert, ca_key, name, [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                  san, valid_days)


def issue_sae_certificate(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, name: str,
                          valid_days: int = DEFAULT_VALID_DAYS, san_uris: tuple[str, ...] = ()
                          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Client certificate identifying an SAE: subject CN = SAE name, clientAuth only, optional SAN URIs."""
    check_name(name, "SAE")
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri) for uri in san_uris]
    return _issue(ca_cert, ca_key, name, [ExtendedKeyUsageOID.CLIENT_AUTH], san, valid_days)


def load_ca(pki: DevPKI) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and key init_pki wrote, to issue more certificates from it."""
    certificate = x509.load_pem_x509_certificate(pki.ca_cert_file.read_bytes())
    key = serialization.load_pem_private_key(pki.ca_key_file.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{pki.ca_key_file} is not an EC private key")
    return certificate, key


def write_issued(directory: Path, stem: str, certificate: x509.Certificate,
                 key: ec.EllipticCurvePrivateKey) -> Issued:
    """Write a certificate and key as STEM.pem and STEM.key (0600) into `directory`."""
    issued = Issued(stem, Path(directory) / f"{stem}.pem", Path(directory) / f"{stem}.key")
    _write_pair(issued.cert_file, issued.key_file, certificate, key)
    return issued


def pki_paths(directory: Path, kme_names: list[str], sae_names: list[str]) -> DevPKI:
    """Where init_pki writes: ca.pem, ca.key, kme-NAME.pem/.key, sae-NAME.pem/.key."""
    directory = Path(directory)
    return DevPKI(
        directory=directory, ca_cert_file=directory / "ca.pem", ca_key_file=directory / "ca.key",
        kmes={name: Issued(name, directory / f"kme-{name}.pem", directory / f"kme-{name}.key")
              for name in kme_names},
        saes={name: Issued(name, directory / f"sae-{name}.pem", directory / f"sae-{name}.key")
              for name in sae_names},
    )


def _all_files(pki: DevPKI) -> list[Path]:
    files = [pki.ca_cert_file, pki.ca_key_file]
    for issued in [*pki.kmes.values(), *pki.saes.values()]:
        files += [issued.cert_file, issued.key_file]
    return files


def init_pki(directory: str | os.PathLike, kme_names: list[str], sae_names: list[str], *,
             force: bool = False, valid_days: int = DEFAULT_VALID_DAYS) -> DevPKI:
    """Write a CA plus one certificate per KME and SAE into `directory` (created if missing).

    Raises PKIError for invalid or repeated names, and when a file to write exists already (unless
    `force`, which replaces it).
    """
    for names, what in ((kme_names, "KME"), (sae_names, "SAE")):
        for name in names:
            check_name(name, what)
        if len(set(names)) != len(names):
            raise PKIError(f"{what} names repeat: {', '.join(sorted(names))}")
    if not 1 <= valid_days <= CA_VALID_DAYS:
        raise PKIError(f"validity must be 1 to {CA_VALID_DAYS} days (the CA's own), got {valid_days}")
    pki = pki_paths(Path(directory), list(kme_names), list(sae_names))
    if pki.directory.exists() and not pki.directory.is_dir():
        raise PKIError(f"{pki.directory} exists and is not a directory")
    existing = [path for path in _all_files(pki) if path.exists() or path.is_symlink()]
    if existing and not force:
        raise PKIError(f"{pki.directory} already holds {', '.join(path.name for path in existing)} "
                       "(use --force to replace)")
    pki.directory.mkdir(parents=True, exist_ok=True)

    ca_cert, ca_key = create_ca()
    _write_pair(pki.ca_cert_file, pki.ca_key_file, ca_cert, ca_key)
    for name, issued in pki.kmes.items():
        _write_pair(issued.cert_file, issued.key_file, *issue_kme_certificate(ca_cert, ca_key, name, valid_days))
    for name, issued in pki.saes.items():
        _write_pair(issued.cert_file, issued.key_file, *issue_sae_certificate(ca_cert, ca_key, name, valid_days))
    return pki


def _write_pair(cert_file: Path, key_file: Path, certificate: x509.Certificate,
                key: ec.EllipticCurvePrivateKey) -> None:
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_new(key_file, key_pem, _PRIVATE_MODE)
    _write_new(cert_file, certificate.public_bytes(serialization.Encoding.PEM), _PUBLIC_MODE)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from the start (replacing any old file), so a key is never readable by others."""
    if path.exists() or path.is_symlink():
        path.unlink()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)

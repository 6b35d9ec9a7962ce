"""Development PKI: `qkdctl pki init` writes keys 0600 from creation, certificates openssl accepts, clear errors."""
import stat
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qkdd.pki import PKIError, init_pki


def _qkdctl(*args):
    return subprocess.run([sys.executable, "-m", "qkdd.ctl", *args], capture_output=True, text=True, timeout=60)


def _openssl_verify(ca_file, cert_file, purpose):
    return subprocess.run(["openssl", "verify", "-CAfile", str(ca_file), "-purpose", purpose, str(cert_file)],
                          capture_output=True, text=True, timeout=30)


def _load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_qkdctl_pki_init_writes_verifiable_certificates_with_private_modes(tmp_path):
    directory = tmp_path / "pki"
    result = _qkdctl("pki", "init", str(directory), "--kme", "kme-a", "--kme", "kme-b", "--sae", "sae-1")
    assert result.returncode == 0, result.stderr
    names = sorted(path.name for path in directory.iterdir())
    assert names == sorted(["ca.pem", "ca.key", "kme-kme-a.pem", "kme-kme-a.key", "kme-kme-b.pem", "kme-kme-b.key",
                            "sae-sae-1.pem", "sae-sae-1.key"])
    for path in directory.iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.suffix == ".key":
            assert mode == 0o600, path
        else:
            assert mode & 0o077 in (0o044, 0o000) and not mode & 0o022, path
    for kme in ["kme-a", "kme-b"]:
        verified = _openssl_verify(directory / "ca.pem", directory / f"kme-{kme}.pem", "sslserver")
        assert verified.returncode == 0 and ": OK" in verified.stdout, verified.stderr
        assert _openssl_verify(directory / "ca.pem", directory / f"kme-{kme}.pem", "sslclient").returncode == 0
    assert _openssl_verify(directory / "ca.pem", directory / "sae-sae-1.pem", "sslclient").returncode == 0
    assert _openssl_verify(directory / "ca.pem", directory / "sae-sae-1.pem", "sslserver").returncode != 0


def test_certificate_contents(tmp_path):
    pki = init_pki(tmp_path, ["kme-a"], ["sae-x"])
    kme = _load(pki.kmes["kme-a"].cert_file)
    san = kme.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["kme-a", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    kme_usages = kme.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(kme_usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    sae = _load(pki.saes["sae-x"].cert_file)
    assert sae.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "sae-x"
    assert list(sae.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    ca = _load(pki.ca_cert_file)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert sae.issuer == ca.subject and kme.issuer == ca.subject


def test_existing_files_need_force_and_force_keeps_key_modes(tmp_path):
    assert _qkdctl("pki", "init", str(tmp_path), "--sae", "sae-1").returncode == 0
    old_ca = (tmp_path / "ca.pem").read_bytes()
    again = _qkdctl("pki", "init", str(tmp_path), "--sae", "sae-1")
    assert again.returncode == 2 and "already holds" in again.stderr and "--force" in again.stderr
    assert (tmp_path / "ca.pem").read_bytes() == old_ca
    (tmp_path / "sae-sae-1.key").chmod(0o644)
    forced = _qkdctl("pki", "init", str(tmp_path), "--sae", "sae-1", "--force")
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "ca.pem").read_bytes() != old_ca
    assert stat.S_IMODE((tmp_path / "sae-sae-1.key").stat().st_mode) == 0o600


@pytest.mark.parametrize("name", ["a/b", "../x", "", "-lead", "trail-", "sp ace", "a" * 64, "ünï"])
def test_invalid_names_are_rejected(tmp_path, name):
    with pytest.raises(PKIError, match="not valid"):
        init_pki(tmp_path, [], [name])
    assert not any(tmp_path.iterdir())
    result = _qkdctl("pki", "init", str(tmp_path), f"--kme={name}")
    assert result.returncode == 2 and "not valid" in result.stderr and "Traceback" not in result.stderr


def test_repeated_names_are_rejected(tmp_path):
    with pytest.raises(PKIError, match="repeat"):
        init_pki(tmp_path, ["kme-a", "kme-a"], [])


@pytest.mark.parametrize("days", ["0", "3651", "999999999"])
def test_validity_outside_the_cas_is_one_line_and_writes_nothing(tmp_path, days):
    result = _qkdctl("pki", "init", str(tmp_path / "pki"), "--kme=kme-a", f"--days={days}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == f"qkdctl pki init: validity must be 1 to 3650 days (the CA's own), got {days}\n"
    assert not (tmp_path / "pki").exists()

"""Peer identities: key files on disk (modes, formats, refusals) and the `qkdctl peer-key` commands."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from qkdd.peer.identity import (IdentityError, generate_identity, key_fingerprint, load_private_key,
                                load_public_key, public_key_base64, public_key_pem, save_private_key,
                                save_public_key)
from qkdd.peer.keycli import generate_key_files


def raw(public_key) -> bytes:
    return public_key.public_bytes_raw()


def test_private_key_round_trips_with_mode_0600(tmp_path):
    key = generate_identity()
    path = tmp_path / "site.key"
    save_private_key(key, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert raw(load_private_key(path).public_key()) == raw(key.public_key())
    with pytest.raises(IdentityError, match="exists; refusing to overwrite"):
        save_private_key(generate_identity(), path)
    assert [p.name for p in tmp_path.iterdir()] == ["site.key"]  # no temporary left behind


def test_private_key_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "site.key"
    save_private_key(generate_identity(), path)
    path.chmod(0o644)
    with pytest.raises(IdentityError, match=r"accessible by group or others \(mode 0644\); run: chmod 600"):
        load_private_key(path)


def test_pinned_public_key_loads_from_pem_file_pem_text_and_base64(tmp_path):
    public = generate_identity().public_key()
    save_public_key(public, tmp_path / "peer.pub")
    for value in (tmp_path / "peer.pub", str(tmp_path / "peer.pub"), public_key_pem(public).decode(),
                  public_key_base64(public), "  " + public_key_base64(public) + "\n"):
        assert raw(load_public_key(value)) == raw(public)
    assert len(key_fingerprint(public)) == 32


@pytest.mark.parametrize("value, error", [
    ("/nonexistent/peer.pub", "cannot read pinned peer key"),
    ("A" * 2000 + "!", "neither PEM nor base64"),
    ("QUJD" * 700, "decodes to 2100 bytes; an ML-DSA-65 public key has 1952"),
])
def test_bad_pinned_keys_are_refused_clearly(value, error):
    with pytest.raises(IdentityError, match=error):
        load_public_key(value)


def test_keys_of_another_algorithm_are_refused(tmp_path):
    from cryptography.hazmat.primitives import serialization as s
    other = ed25519.Ed25519PrivateKey.generate()
    pem = other.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(IdentityError, match="not ML-DSA-65"):
        load_public_key(pem)
    path = tmp_path / "ed.key"
    path.write_bytes(other.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
    path.chmod(0o600)
    with pytest.raises(IdentityError, match="not ML-DSA-65"):
        load_private_key(path)
    path.write_text("garbage")
    with pytest.raises(IdentityError, match="not an unencrypted PEM private key"):
        load_private_key(path)


def test_generate_key_files_refuses_bad_names_and_overwrites(tmp_path):
    private_path, public_path = generate_key_files(tmp_path / "keys", "site-a")
    assert raw(load_private_key(private_path).public_key()) == raw(load_public_key(public_path))
    with pytest.raises(IdentityError, match="use --force"):
        generate_key_files(tmp_path / "keys", "site-a")
    with pytest.raises(IdentityError, match="key name"):
        generate_key_files(tmp_path, "../escape")


def test_qkdctl_peer_key_generate_and_show(tmp_path):
    run = [sys.executable, "-m", "qkdd.ctl", "peer-key"]
    made = subprocess.run(run + ["generate", "--out", str(tmp_path), "--name", "site-b"],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    private_path, public_path = tmp_path / "site-b.key", tmp_path / "site-b.pub"
    assert stat.S_IMODE(os.stat(private_path).st_mode) == 0o600
    public = load_public_key(public_path)
    assert public_key_base64(public) in made.stdout  # the line to paste into the other end's config
    assert "BEGIN PRIVATE KEY" not in made.stdout
    for path in (private_path, public_path):
        shown = subprocess.run(run + ["show", str(path)], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and public_key_base64(public) in shown.stdout
    again = subprocess.run(run + ["generate", "--out", str(tmp_path), "--name", "site-b"],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "use --force" in again.stderr


def test_fifo_directory_or_oversized_key_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "peer.key"
    os.mkfifo(fifo, 0o600)                      # nobody writes to it: a blocking read would hang
    with pytest.raises(IdentityError, match="not a regular file"):
        load_private_key(fifo)
    with pytest.raises(IdentityError, match="not a regular file"):
        load_public_key(str(tmp_path))
    huge = tmp_path / "huge.pub"
    huge.write_bytes(b"A" * (1024 * 1024))
    with pytest.raises(IdentityError, match="more than the 65536 a key file may have"):
        load_public_key(str(huge))

"""Start-up self-tests: every known-answer test passes here, each one that fails is named, and the daemon
then refuses to start with one log line, before anything is bound or READY=1 is sent."""
import logging

import numpy as np
import pytest

from qkdd import daemon, selftest
from qkdd.bindings.toeplitz import toeplitz_hash
from qkdd.config import load_config


def test_all_self_tests_pass():
    assert selftest.run_self_tests() == ["Toeplitz", "polynomial hash", "AES-GCM", "ML-DSA-65", "ML-KEM-768"]


def wrong_toeplitz(seed, key, n_bits, m_bits, **kwargs):
    out = toeplitz_hash(seed, key, n_bits, m_bits, **kwargs)
    out[0] ^= np.uint64(1)
    return out


@pytest.mark.parametrize("name, patch", [
    ("Toeplitz", lambda mp: mp.setattr("qkdd.bindings.toeplitz.toeplitz_hash", wrong_toeplitz)),
    ("polynomial hash", lambda mp: mp.setattr("qkdd.auth.wegman_carter.universal_hash", lambda m, k: bytes(16))),
    ("AES-128-GCM", lambda mp: mp.setattr(selftest, "GCM_VECTORS", [(bytes(16), "00" * 32)])),
    ("ML-DSA-65 key generation", lambda mp: mp.setattr(selftest, "MLDSA65_ACVP_PK_SHA3_256", "00" * 32)),
    ("ML-KEM-768 key generation", lambda mp: mp.setattr(selftest, "MLKEM768_ACVP_EK_SHA3_256", "00" * 32)),
])
def test_a_failing_self_test_is_named(monkeypatch, name, patch):
    patch(monkeypatch)
    with pytest.raises(selftest.SelfTestError, match=name) as caught:
        selftest.run_self_tests()
    assert "Error" not in str(caught.value)         # the known answer differed; nothing raised instead


def test_the_daemon_refuses_to_start_with_one_line(tmp_path, monkeypatch, caplog):
    config_path = tmp_path / "qkdd.toml"
    config_path.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[api]\nlisten = "127.0.0.1:0"\n'
                           '[health]\nlisten = "127.0.0.1:0"\n')
    monkeypatch.setattr(selftest, "GCM_VECTORS", [(bytes(32), "00" * 32)])
    served = []
    monkeypatch.setattr(daemon, "serve", lambda *args: served.append(args))
    with caplog.at_level(logging.INFO, logger="qkdd"):
        assert daemon.run(load_config(str(config_path), {})) == daemon.EXIT_STARTUP_FAILED
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["cannot start: self-test failed: AES-256-GCM (McGrew-Viega test case 14)"]
    assert not served


def flip_last_hex_digit(value: str) -> str:
    return value[:-1] + ("0" if value[-1] != "0" else "1")


@pytest.mark.parametrize("attribute, expected", [
    ("MLDSA65_ACVP_SEED", "ML-DSA-65 key generation (ACVP ML-DSA-keyGen-FIPS204 tcId 26)"),
    ("MLDSA65_ACVP_PK_SHA3_256", "ML-DSA-65 key generation (ACVP ML-DSA-keyGen-FIPS204 tcId 26)"),
    ("MLDSA65_ACVP_TR", "ML-DSA-65 key generation (ACVP ML-DSA-keyGen-FIPS204 tcId 26)"),
    ("MLKEM768_ACVP_D", "ML-KEM-768 key generation (ACVP ML-KEM-keyGen-FIPS203 tcId 26)"),
    ("MLKEM768_ACVP_EK_SHA3_256", "ML-KEM-768 key generation (ACVP ML-KEM-keyGen-FIPS203 tcId 26)"),
])
def test_a_corrupted_published_vector_fails_its_self_test(monkeypatch, attribute, expected):
    """One hex digit of a published input or answer changed: the test of that primitive fails, naming the
    ACVP case. (z has no published answer of its own here: it is the input of the implicit-rejection check,
    whose expected value is computed from it.)"""
    monkeypatch.setattr(selftest, attribute, flip_last_hex_digit(getattr(selftest, attribute)))
    with pytest.raises(selftest.SelfTestError) as caught:
        selftest.run_self_tests()
    assert str(caught.value) == f"self-test failed: {expected}"


def test_ml_kem_decapsulation_is_checked_on_its_implicit_rejection_path(monkeypatch):
    """A decapsulation that answered with anything but J(z || c) for a non-encapsulation fails by name (here
    the library's answer is replaced by the shared secret of another ciphertext)."""
    from cryptography.hazmat.primitives.asymmetric import mlkem
    real = mlkem.MLKEM768PrivateKey.from_seed_bytes
    class Wrapped:
        def __init__(self, key):
            self._key = key
        def public_key(self):
            return self._key.public_key()
        def decapsulate(self, ciphertext):
            return self._key.decapsulate(bytes([1]) + bytes(ciphertext[1:]))
    monkeypatch.setattr(selftest.mlkem.MLKEM768PrivateKey, "from_seed_bytes", lambda seed: Wrapped(real(seed)))
    with pytest.raises(selftest.SelfTestError, match="implicit rejection"):
        selftest.ml_kem()


def test_the_pq_vectors_are_the_published_fips_final_values():
    """The ACVP values as published (hex as in the JSON files): a seed, H(ek) and tr of 32, 32 and 64 bytes."""
    assert [len(bytes.fromhex(v)) for v in (selftest.MLDSA65_ACVP_SEED, selftest.MLKEM768_ACVP_D,
                                            selftest.MLKEM768_ACVP_Z, selftest.MLKEM768_ACVP_EK_SHA3_256,
                                            selftest.MLDSA65_ACVP_TR)] == [32, 32, 32, 32, 64]

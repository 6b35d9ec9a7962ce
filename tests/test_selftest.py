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
    ("ML-DSA-65", lambda mp: mp.setattr(selftest, "MLDSA65_PUBLIC_SHA256", "00" * 32)),
    ("ML-KEM-768", lambda mp: mp.setattr(selftest, "MLKEM768_PUBLIC_SHA256", "00" * 32)),
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

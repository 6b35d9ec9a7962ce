"""`qkdctl pair` as a real subprocess: both ends' identities (each pinning the other's key) and configurations in
one step; the two daemons it configures, started as real processes, bring the link up (the handshake
passes under the pinned keys, both devices answer)."""
from __future__ import annotations

import stat
import subprocess
import sys
import time

import httpx

from daemon_support import Daemon, clean_env
from qkdd.link.pair import free_port


def pair(out, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qkdd.ctl", "pair", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=60, env=clean_env())


def test_pair_writes_both_ends_and_the_daemons_run_the_link(tmp_path):
    out = tmp_path / "pair"
    peer_port, device_port = free_port(), free_port()
    result = pair(out, "--alice-host", "127.0.0.1", "--peer-port", str(peer_port), "--device-port",
                  str(device_port), "--link-id", "lab-1", "--distance-km", "10",
                  "--install-dir", f"{out}/{{role}}", "--state-dir", f"{tmp_path}/state-{{role}}")
    assert result.returncode == 0, result.stderr
    for role in ("alice", "bob"):
        key = out / role / "peer" / "identity.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (out / "alice/peer/other-end.pub").read_bytes() == (out / "bob/peer/identity.pub").read_bytes()
    assert (out / "bob/peer/other-end.pub").read_bytes() == (out / "alice/peer/identity.pub").read_bytes()
    for role in ("alice", "bob"):
        config = str(out / role / "qkdd.toml")
        check = subprocess.run([sys.executable, "-m", "qkdd", "check-config", "--config", config],
                               capture_output=True, text=True, timeout=60, env=clean_env())
        assert check.returncode == 0 and check.stderr == "", check.stderr         # no "will not run" warning

    env = clean_env(QKD_API_LISTEN="127.0.0.1:0", QKD_HEALTH_LISTEN="127.0.0.1:0")
    daemons = {}
    try:
        for role in ("alice", "bob"):
            (tmp_path / role).mkdir()
            daemons[role] = Daemon((out / role / "qkdd.toml").read_text(), tmp_path / role, env).start()
        # both links come up: the session's handshake passed under the pinned keys, both devices answer
        deadline = time.monotonic() + 90
        states = {}
        while time.monotonic() < deadline:
            for role, daemon in daemons.items():
                health = httpx.get(f"{daemon.health_url}/healthz", timeout=10).json()
                states[role] = health["links"][0]["state"]
            if all(state in ("running", "degraded") for state in states.values()):
                break
            time.sleep(0.3)
        assert all(state in ("running", "degraded") for state in states.values()), states
        assert health["links"][0]["link_id"] == "lab-1"
    finally:
        for daemon in daemons.values():
            daemon.stop()


def test_pair_refuses_to_overwrite_and_names_bad_input(tmp_path):
    out = tmp_path / "pair"
    assert pair(out, "--alice-host", "192.0.2.1").returncode == 0
    again = pair(out, "--alice-host", "192.0.2.1")
    assert again.returncode == 1 and "exists; use --force" in again.stderr
    assert pair(out, "--alice-host", "192.0.2.1", "--force").returncode == 0
    bad = pair(tmp_path / "bad", "--alice-host", "192.0.2.1", "--link-id", "no spaces allowed")
    assert bad.returncode == 2 and "links[0].link_id" in bad.stderr
    text = (out / "bob" / "qkdd.toml").read_text()
    assert 'peer_addr = "192.0.2.1:7071"' in text and 'peer_key_file = "/etc/qkdd/peer/identity.key"' in text

"""`make demo` (python -m qkdd.link.demo) end to end: two real daemons on a simulated link hand out the
same key at both ends over /v1 and over ETSI GS QKD 014 (mutual TLS), each delivered only once."""
from __future__ import annotations

import os
import subprocess
import sys


def test_the_demo_shows_the_same_key_at_both_ends_over_v1_and_etsi014():
    env = {key: value for key, value in os.environ.items() if not key.startswith(("QKD_", "KMS_"))}
    done = subprocess.run([sys.executable, "-m", "qkdd.link.demo", "--seconds", "2"], capture_output=True,
                          text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    assert "same key at both ends: yes" in out
    assert "same key for sae-a and sae-b: yes" in out
    assert "fetching it a second time: 410 key already delivered" in out
    assert "fetching it a second time: 400 one or more keys specified are not found on KME" in out
    assert out.count("/enc_keys") == 1 and out.count("/dec_keys?key_ID=") == 1

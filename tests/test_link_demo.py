"""`make demo` (python -m qkdd.link.demo) end to end: two real daemons on a simulated link hand out the
same key at both ends over /v1 and over ETSI GS QKD 014 (mutual TLS), each delivered only once; with --keep
both daemons run on, and the printed qkdctl command reaches them."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time


def test_the_demo_shows_the_same_key_at_both_ends_and_keep_leaves_both_daemons_running():
    env = {key: value for key, value in os.environ.items() if not key.startswith(("QKD_", "KMS_"))}
    done = subprocess.run([sys.executable, "-m", "qkdd.link.demo", "--seconds", "1", "--keep"], capture_output=True,
                          text=True, timeout=240, env=env)
    out = done.stdout
    stops = [line for line in out.splitlines() if line.strip().startswith("stop them:")]
    assert stops, out[-4000:] + done.stderr[-4000:]        # without it the demo failed and stopped its daemons
    pids = [int(word) for word in stops[0].split("kill ")[1].split("&&")[0].split()]
    workdir = stops[0].rsplit("rm -rf ", 1)[1].strip()
    try:
        assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
        assert "same key at both ends: yes" in out
        assert "same key for sae-a and sae-b: yes" in out
        assert "fetching it a second time: 410 key already delivered" in out
        assert "fetching it a second time: 400 one or more keys specified are not found on KME" in out
        assert out.count("/enc_keys") == 1 and out.count("/dec_keys?key_ID=") == 1
        # the link comes up as "starting", never shown as an alarm state while it does
        assert "halted" not in out and "fallback" not in out
        assert len(pids) == 2
        for pid in pids:
            assert alive(pid)                                 # still running
        status_line = next(line for line in out.splitlines() if line.strip().startswith("qkdctl status "))
        status = subprocess.run([sys.executable, "-m", "qkdd.ctl", *status_line.split()[1:], "--json"],
                                capture_output=True, text=True, timeout=60, env=env)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["links"][0]["link_id"] == "sim-1"
        assert os.path.exists(os.path.join(workdir, "alice.toml")) and os.path.exists(os.path.join(workdir, "pki"))
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in pids:                                     # not our children: wait for them to go
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and alive(pid):
                time.sleep(0.2)
        shutil.rmtree(workdir, ignore_errors=True)


def alive(pid: int) -> bool:
    """Running (not exited, nor a zombie that nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

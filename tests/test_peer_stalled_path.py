"""A partition shorter than the idle timeout, on a kernel that cannot cap TCP's retransmission timeout
(before Linux 6.15; simulated by leaving the cap off): the session's connection backs off exponentially,
and its next retransmission may come tens of seconds after the path returned. The dialling end notices
the stalled path (silence past the heartbeat while TCP backs off) and brings a new session up beside it
within a couple of seconds of the path's return. Both ends run in tests/peer_partition_process.py, in a
network namespace of their own whose loopback the test cuts with iptables for 14 s (real kernel, real
sleeps). Needs root and iptables.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from qkdd.peer.tcp_tuning import path_stalled, retransmission_state
from tests.wireguard_support import wait_for

pytestmark = pytest.mark.root

PARTITION_S = 14.0            # past the retransmission at 12.6 s: the next one without a new session is at 25.4 s
RESUME_LIMIT_S = 5.0             # issue 24: service within 5 s of a fault's end


def test_a_stall_needs_silence_past_the_heartbeat_and_a_backoff_past_the_ceiling():
    assert path_stalled(6.5, 5.0, backoff=3, rto_s=1.6)
    assert not path_stalled(5.5, 5.0, backoff=3, rto_s=1.6)       # a heartbeat may still be on its way
    assert not path_stalled(30.0, 5.0, backoff=0, rto_s=1.6)      # nothing unacknowledged: an idle peer
    assert not path_stalled(30.0, 5.0, backoff=6, rto_s=1.0)      # a capped kernel retransmits every second


def test_the_retransmission_state_of_a_healthy_connection_has_no_backoff():
    import socket
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname()) as client:
            accepted, _ = server.accept()
            with accepted:
                client.sendall(b"x")
                assert accepted.recv(1) == b"x"
                backoff, rto_s = retransmission_state(client)
                assert backoff == 0 and 0.2 <= rto_s <= 1.0        # Linux: at least TCP_RTO_MIN (200 ms)


class Events:
    """The child's JSON lines, read in a thread as they come."""

    def __init__(self, stream) -> None:
        self.lines: list[dict] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._lock:
                self.lines.append(json.loads(line))

    def first(self, predicate) -> dict | None:
        with self._lock:
            return next((event for event in self.lines if predicate(event)), None)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("iptables") is None, reason="needs root and iptables")
def test_a_stalled_session_is_replaced_within_seconds_of_a_partitions_end(tmp_path):
    netns = f"qkst{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    child = None
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        stderr = open(tmp_path / "child.log", "wb")
        child = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable,
                                  str(Path(__file__).with_name("peer_partition_process.py"))],
                                 stdout=subprocess.PIPE, stderr=stderr, text=True,
                                 env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
        events = Events(child.stdout)
        port = wait_for("the listening port", lambda: events.first(lambda e: e["event"] == "listening"),
                        timeout_s=20)["port"]
        for end in ("alice", "bob"):
            wait_for(f"records at {end}", lambda: events.first(lambda e: e["event"] == "record" and e["end"] == end),
                     timeout_s=20)
        rules = [["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port), "-j", "DROP"],
                 ["INPUT", "-i", "lo", "-p", "tcp", "--sport", str(port), "-j", "DROP"]]
        for rule in rules:
            subprocess.run(["ip", "netns", "exec", netns, "iptables", "-A", *rule], check=True)
        time.sleep(PARTITION_S)
        for rule in rules:
            subprocess.run(["ip", "netns", "exec", netns, "iptables", "-D", *rule], check=True)
        ended_s = time.monotonic()
        for end in ("alice", "bob"):
            first = wait_for(f"a record at {end} after the partition", lambda: events.first(
                lambda e: e["event"] == "record" and e["end"] == end and e["t"] > ended_s), timeout_s=20)
            assert first["t"] - ended_s <= RESUME_LIMIT_S, (end, first["t"] - ended_s)
            assert first["epoch"] == 2, first          # on the new session, not the stalled one
        log = (tmp_path / "child.log").read_text()
        assert "TCP backs off" in log and "trying a new session" in log, log[-3000:]
    finally:
        if child is not None:
            child.kill()
            child.wait()
        subprocess.run(["ip", "netns", "del", netns], check=False)

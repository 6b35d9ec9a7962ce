"""IKEv2 PPKs (RFC 8784) under two real qkdd daemons: each daemon's `[[ipsec]]` consumer drives its own real
strongSwan charon (two network namespaces, ESP in user space with kernel-libipsec) over VICI, with keys from a
live simulated link (qkdd.link.pair) agreed over the link's classical channel. The IKE SA comes up with
`ppk_required` and the agreed key as PPK, traffic flows through the tunnel, and a rotation (SIGUSR1 at alice)
brings up a fresh IKE SA with the next PPK that replaces the first. Then the shared fallback policy with the
simulator's fiber-cut knob (60 dB of extra loss through alice's admin API) and a dead daemon: no fresh key,
alice killed (-9); bob keeps the PPK past expiry_s; alice, restarted after it, applies "random" at once,
then bob does too, and the IKE SA is closed (no SA can come up: each end holds a random PPK of its own);
with the fiber mended keys
flow again and a fresh IKE SA comes up with the next PPK. Needs root, /dev/net/tun and Debian's
charon-systemd, strongswan-swanctl, libcharon-extra-plugins (scripts/system-packages.txt)."""
from __future__ import annotations

import re
import signal

import pytest

from qkdd.link.pair import LinkPair
from tests.daemon_support import wait_until
from tests.strongswan_support import CharonPair, missing_requirements, run

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(missing_requirements() is not None, reason=missing_requirements() or "")]

FRAME_DETECTIONS = 250_000
NAME = "site-a-b-ike"


def ipsec_config(end, initiator: bool) -> str:
    return f"""
[[ipsec]]
name = "{NAME}"
link_id = "sim-1"
connection = "qkd"
initiator = {str(initiator).lower()}
vici_socket = "{end.vici}"
swanctl_conf = "{end.swanctl_conf}"
rotation_interval_s = 30
expiry_s = 30
on_exhausted = "random"
activation_delay_s = 0.5
retry_interval_s = 0.3
retry_max_s = 2.0
"""


def established(end) -> list[dict]:
    return [sa for sa in end.ike_sas() if sa["state"] == "ESTABLISHED"]


def used_ppk_ids(end) -> list[str]:
    return re.findall(r"using PPK for PPK_ID '([^']+)'", end.log())


def test_two_daemons_bring_up_an_ike_sa_with_the_agreed_ppk_rotate_it_and_fail_closed_past_expiry(tmp_path):
    charons = CharonPair(tmp_path / "charon").up()
    # stored keys expire after 2 s, so that none is left in the store once the fiber is cut
    pair = LinkPair(tmp_path / "pair", frame_detections=FRAME_DETECTIONS, admin_tls=True,
                    extra_link={"key_expiry_s": 2.0})
    try:
        pair.write()
        for role, end in (("alice", charons.a), ("bob", charons.b)):
            with open(pair.ends[role].config_path, "a") as config:
                config.write(ipsec_config(end, initiator=role == "alice"))
        for role in ("alice", "bob"):
            pair.start(role)
        for role in ("alice", "bob"):
            pair.wait_ready(role)

        def consumer(role: str) -> dict:
            return pair.http.get(f"http://{pair.ends[role].health}/healthz").json()["consumers"][0]

        def both_at(epoch: int) -> bool:
            records = [consumer(role) for role in ("alice", "bob")]
            return all(record["epoch"] == epoch for record in records) and records[0]["key_id"] == records[1]["key_id"]

        wait_until(lambda: both_at(1), 90, "epoch 1 at both ends")
        first = consumer("alice")["key_id"]
        assert consumer("bob")["kind"] == "ipsec" and consumer("bob")["last_error"] is None
        [sa] = established(charons.b)
        assert sa["ppk"] == "yes"                      # ppk_required: the SA exists only with the PPK
        assert used_ppk_ids(charons.a)[-1:] == [first] and used_ppk_ids(charons.b)[-1:] == [first]
        assert charons.a.ping_peer(), "no traffic through the tunnel of epoch 1"

        pair.ends["alice"].process.send_signal(signal.SIGUSR1)       # rotate now
        wait_until(lambda: both_at(2), 60, "epoch 2 at both ends")
        second = consumer("alice")["key_id"]
        assert second != first
        wait_until(lambda: [s["uniqueid"] for s in established(charons.b)] not in ([], [sa["uniqueid"]])
                   and len(established(charons.b)) == 1, 30, "the IKE SA of epoch 2 to replace the first")
        assert established(charons.b)[0]["ppk"] == "yes"
        assert used_ppk_ids(charons.a)[-2:] == [first, second] and used_ppk_ids(charons.b)[-1] == second
        assert charons.a.ping_peer(), "no traffic through the tunnel of epoch 2"
        packets = sum(child["packets_in"] for s in established(charons.b) for child in s["children"].values())
        assert packets >= 2                            # the pings went through ESP (user space, libipsec)

        # the fiber is cut (no fresh key) and alice's daemon dies (kill -9): bob, the survivor, keeps the PPK
        # past its expiry (no one-sided fallback) and the tunnel stays up
        drift = pair.ends["alice"].url("/v1/links/sim-1/sim/drift")
        assert pair.http.post(drift, json={"extra_loss_db": 60}).status_code == 200
        pair.kill("alice")
        wait_until(lambda: consumer("bob")["kept_past_expiry"], 90, "the PPK to expire at bob")
        assert consumer("bob")["fallback"] is None and [s["ppk"] for s in established(charons.b)] == ["yes"]
        # alice restarts past the expiry, the fiber still cut: she applies "random" at once, never loading the
        # expired PPK again; once the ends meet bob does too, and the SA is gone
        config = pair.ends["alice"].config_path
        config.write_text(config.read_text().replace("[links.sim]\n", "[links.sim]\nextra_loss_db = 60\n", 1))
        loaded_before = len(charons.a.log())
        pair.start("alice")
        pair.wait_ready("alice")
        wait_until(lambda: consumer("alice")["fallback"] == consumer("bob")["fallback"] == "random", 60,
                   "the random fallback at both ends")
        assert "expired while the daemon was down" in pair.ends["alice"].log_path.read_text()
        assert f"PPK shared key with id 'qkdd-{NAME}-{second}'" not in charons.a.log()[loaded_before:]
        wait_until(lambda: established(charons.a) == established(charons.b) == [], 10, "the IKE SA to close")
        tried = run("swanctl", "--initiate", "--ike", "qkd", "--timeout", "10", "--uri", f"unix://{charons.a.vici}",
                    check=False, timeout=30)
        assert tried.returncode != 0 and established(charons.b) == [], tried.stdout[-500:]   # fails closed
        # mended: keys flow again, alice proposes at once, a fresh SA comes up with the next PPK
        assert pair.http.post(drift, json={"extra_loss_db": 0}).status_code == 200
        wait_until(lambda: both_at(3) and consumer("bob")["fallback"] is None, 90, "epoch 3 after the repair")
        third = consumer("alice")["key_id"]
        wait_until(lambda: len(established(charons.b)) == 1, 30, "the IKE SA of epoch 3")
        assert established(charons.b)[0]["ppk"] == "yes" and used_ppk_ids(charons.b)[-1] == third
        assert charons.a.ping_peer(), "no traffic through the tunnel after the repair"
        logs = "".join(pair.ends[role].log_path.read_text() for role in ("alice", "bob"))
        assert "installed on charon" in logs and "Traceback" not in logs
    finally:
        pair.stop()
        charons.down()

"""IKEv2 PPKs (RFC 8784) under two real qkdd daemons: each daemon's `[[ipsec]]` consumer drives its own real
strongSwan charon (two network namespaces, ESP in user space with kernel-libipsec) over VICI, with keys from a
live simulated link (qkdd.link.pair) agreed over the link's classical channel. The IKE SA comes up with
`ppk_required` and the agreed key as PPK, traffic flows through the tunnel, and a rotation (SIGUSR1 at alice)
brings up a fresh IKE SA with the next PPK that replaces the first. Then the shared fallback policy, twice on
the same daemons: the simulator's fiber-cut knob (60 dB of extra loss through alice's admin API) with alice
killed (-9), then its intercept-resend attack with bob killed: no fresh key; the survivor keeps the PPK past
expiry_s; the dead end, restarted after it, applies "random" at once, then the survivor does too, and the
IKE SA is closed (no SA can come up: each end holds a random PPK of its own); with the knob off keys flow
again and a fresh IKE SA comes up with the next PPK. Needs root, /dev/net/tun and Debian's
charon-systemd, strongswan-swanctl, libcharon-extra-plugins (scripts/system-packages.txt)."""
from __future__ import annotations

import re
import signal

import pytest

from qkdd.consumers.ipsec import _vici_call
from qkdd.link.pair import LinkPair
from tests.daemon_support import wait_until
from tests.fallback_support import ATTACK, FIBER_CUT, Knob
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

        # the shared fallback policy, once per knob, a different daemon killed each time (one pair of each)
        fall_back_and_recover(pair, charons, FIBER_CUT, dead="alice")
        fall_back_and_recover(pair, charons, ATTACK, dead="bob")
        logs = "".join(pair.ends[role].log_path.read_text() for role in ("alice", "bob"))
        assert "installed on charon" in logs and "Traceback" not in logs
    finally:
        pair.stop()
        charons.down()


def shared_ids(end) -> set[str]:
    """The ids of the shared keys (PPKs among them) loaded in `end`'s charon (VICI get-shared)."""
    [answer] = _vici_call(str(end.vici), "get_shared")
    return {shared_id.decode() if isinstance(shared_id, bytes) else shared_id for shared_id in answer["keys"]}


def fall_back_and_recover(pair: LinkPair, charons: CharonPair, knob: Knob, dead: str) -> None:
    """`knob` (through alice's admin API) halts the link: no fresh key, and the stored ones expire after 2 s.
    `dead`'s daemon is killed (-9), its charon goes on: the survivor keeps the PPK past expiry_s (no one-sided
    fallback) and the tunnel stays up. `dead`, restarted past the expiry with the knob still on, applies
    "random" at once, never loading the expired PPK again (and unloading what its killed run left in charon);
    once the ends meet the survivor does too, and the IKE SA is closed (no SA can come up: each end holds a
    random PPK of its own). With the knob off keys flow again, alice proposes at once, and a fresh IKE SA comes
    up with the next PPK."""
    survivor = "alice" if dead == "bob" else "bob"
    ends = {"alice": charons.a, "bob": charons.b}

    def consumer(role: str) -> dict:
        return pair.http.get(f"http://{pair.ends[role].health}/healthz").json()["consumers"][0]

    control = pair.ends["alice"].url(knob.path("sim-1"))
    assert pair.http.post(control, json=knob.on).status_code == 200
    wait_until(lambda: pair.metrics("alice")["state"] == "halted", 30, f"the link to halt ({knob.name})")
    pair.kill(dead)
    wait_until(lambda: consumer(survivor)["kept_past_expiry"], 120, f"the PPK to expire at {survivor}")
    kept = consumer(survivor)
    assert kept["fallback"] is None and [s["ppk"] for s in established(charons.b)] == ["yes"]
    expired_id = f"qkdd-{NAME}-{kept['key_id']}"
    assert expired_id in shared_ids(ends[dead])          # the dead daemon's charon still holds it
    config = pair.ends[dead].config_path
    text = config.read_text()
    if dead == "alice":                        # the simulated fiber runs in alice's daemon: the knob stays on
        config.write_text(knob.on_in_config(text))
    loaded_before, log_before = len(ends[dead].log()), len(pair.ends[dead].log_path.read_text())
    try:
        pair.start(dead)
        pair.wait_ready(dead)
    finally:
        config.write_text(text)
    wait_until(lambda: consumer("alice")["fallback"] == consumer("bob")["fallback"] == "random", 60,
               "the random fallback at both ends")
    assert "expired while the daemon was down" in pair.ends[dead].log_path.read_text()[log_before:]
    assert f"PPK shared key with id '{expired_id}'" not in ends[dead].log()[loaded_before:]
    assert not any(expired_id in shared_ids(end) for end in ends.values())   # unloaded at both ends
    wait_until(lambda: established(charons.a) == established(charons.b) == [], 10, "the IKE SA to close")
    tried = run("swanctl", "--initiate", "--ike", "qkd", "--timeout", "10", "--uri", f"unix://{charons.a.vici}",
                check=False, timeout=30)
    assert tried.returncode != 0 and established(charons.b) == [], tried.stdout[-500:]   # fails closed
    wait_until(lambda: pair.metrics("alice")["state"] == "halted", 30, "the link to stay halted")
    # mended: keys flow again, alice proposes at once, a fresh SA comes up with the next PPK
    assert pair.http.post(control, json=knob.off).status_code == 200

    def next_epoch_at_both() -> bool:
        records = [consumer(role) for role in ("alice", "bob")]
        return (records[0]["key_id"] == records[1]["key_id"] and records[0]["epoch"] > kept["epoch"]
                and records[0]["fallback"] is records[1]["fallback"] is None)
    wait_until(next_epoch_at_both, 90, f"a fresh epoch after the {knob.name}")
    fresh = consumer("alice")["key_id"]
    wait_until(lambda: len(established(charons.b)) == 1, 30, f"the IKE SA of the epoch after the {knob.name}")
    assert established(charons.b)[0]["ppk"] == "yes" and used_ppk_ids(charons.b)[-1] == fresh
    assert charons.a.ping_peer(), f"no traffic through the tunnel after the {knob.name}"

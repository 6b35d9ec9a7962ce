"""IKEv2 PPKs (RFC 8784) from QKD keys on real strongSwan charon daemons (qkdd.consumers.ipsec): two
namespaces, ESP in user space (kernel-libipsec), VICI for everything qkdd does, swanctl for what the
operator does. Both ends' rotations agree on each key over the real reservation service (an in-memory
session stands in for the peer session, as in the WireGuard rotation test) with real SQLite key stores.
Needs root, /dev/net/tun and Debian's charon-systemd, strongswan-swanctl, libcharon-extra-plugins."""
from __future__ import annotations

import os
import re
import time
import uuid

import pytest
import trio

from qkdd.consumers import swanctl_conf
from qkdd.consumers.ipsec import PpkSink, ViciError, _vici_call
from qkdd.consumers.rotation import EpochChannel, KeyRotation
from qkdd.consumers.wg_epoch import Epoch, consumer_tag
from qkdd.keystore import KeyStore, StoredKey
from qkdd.metrics import Metrics
from tests.reservation_support import memory_session, reservation_service
from tests.strongswan_support import SWANCTL_CONF, CharonPair, missing_requirements

LINK_ID = "ike-link"
NAME = "site-a-b-ike"


# ---- swanctl.conf, read as swanctl reads it ---------------------------------------------------------

def test_a_swanctl_connection_becomes_the_load_conn_message_swanctl_sends():
    text = SWANCTL_CONF.format(name="x", me="10.0.0.1", peer="10.0.0.2", me_id="site-a", peer_id="site-b",
                               psk="p")
    conn = swanctl_conf.connection(text, "qkd")
    assert conn["local_addrs"] == ["10.0.0.1"] and conn["proposals"] == ["aes256-sha256-x25519"]
    assert conn["ppk_required"] == "yes" and conn["local"] == {"auth": "psk", "id": "site-a"}
    assert conn["children"]["net"]["remote_ts"] == ["10.0.0.2/32"]
    with pytest.raises(swanctl_conf.SwanctlConfError, match="no connection 'other'"):
        swanctl_conf.connection(text, "other")
    with pytest.raises(swanctl_conf.SwanctlConfError, match=":2: include"):
        swanctl_conf.parse("connections {\ninclude conf.d/*.conf\n}")
    with pytest.raises(swanctl_conf.SwanctlConfError, match="not closed"):
        swanctl_conf.parse("connections {\n a {\n}")


# ---- real charon ----------------------------------------------------------------------------------

pytestmark_charon = pytest.mark.skipif(missing_requirements() is not None, reason=missing_requirements() or "")


@pytest.fixture(scope="module")
def charons(tmp_path_factory):
    reason = missing_requirements()
    if reason is not None:
        pytest.skip(reason)
    pair = CharonPair(tmp_path_factory.mktemp("charon")).up()
    try:
        yield pair
    finally:
        pair.down()


def sink_for(end, initiator: bool) -> PpkSink:
    return PpkSink(name=NAME, connection="qkd", initiator=initiator, vici_socket=end.vici,
                   swanctl_conf_path=str(end.swanctl_conf))


def key(material: bytes | None = None) -> StoredKey:
    return StoredKey(key_id=str(uuid.uuid4()), link_id=LINK_ID, bits=256, created_at=time.time(),
                     expires_at=time.time() + 3600, material=material or os.urandom(32), frame_id=1)


def established(end) -> list[dict]:
    return [sa for sa in end.ike_sas() if sa["state"] == "ESTABLISHED"]


def used_ppk_ids(end) -> list[str]:
    return re.findall(r"using PPK for PPK_ID '([^']+)'", end.log())


class _Policy:
    name = NAME
    link_id = LINK_ID
    expiry_s = 3600.0
    on_exhausted = "random"
    activation_delay_s = 0.3
    retry_interval_s = 0.3

    def __init__(self, hybrid: str = "none") -> None:
        self.hybrid = hybrid


@pytest.mark.root
@pytest.mark.parametrize("hybrid", ["none", "mlkem768"])
def test_rotations_bring_up_ike_sas_with_each_new_ppk_and_traffic_flows(charons, tmp_path, hybrid):
    """With hybrid = "mlkem768" each PPK is HKDF(QKD key || ML-KEM-768 secret): an IKE SA that comes up
    with ppk_required shows both ends derived the same one."""
    keys = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(3)]
    stores = {}
    for role in ("alice", "bob"):
        (tmp_path / role).mkdir()
        store = KeyStore(str(tmp_path / role / "keys.sqlite3"), os.urandom(32))
        store.put_pending(LINK_ID, 1, keys, expires_at=time.time() + 3600, allocatable=[role == "alice"] * 3)
        store.commit_frame(LINK_ID, 1)
        stores[role] = store
    rotations = {role: KeyRotation(_Policy(hybrid), kind="ipsec", tag=consumer_tag("ipsec", NAME),
                                   leader=role == "alice",
                                   sink=sink_for(end, initiator=role == "alice"), store=stores[role],
                                   metrics=Metrics().consumer("ipsec", NAME), state_dir=str(tmp_path / role),
                                   rotation_interval_s=4.0, retry_max_s=2.0, what="ipsec")
                 for role, end in (("alice", charons.a), ("bob", charons.b))}

    async def until(what, predicate, timeout_s=40.0):
        with trio.fail_after(timeout_s):
            while not await trio.to_thread.run_sync(predicate):
                await trio.sleep(0.1)

    async def main():
        async with trio.open_nursery() as nursery:
            for rotation in rotations.values():
                nursery.start_soon(rotation.run)
            a_stream, b_stream = memory_session()
            for role, stream in (("alice", a_stream), ("bob", b_stream)):
                service, serve = reservation_service(LINK_ID)
                EpochChannel([rotations[role]]).attach_to(service)
                nursery.start_soon(serve, stream)
            await until("epoch 1", lambda: rotations["alice"].state.epoch.number == 1
                        and rotations["bob"].state.epoch.number == 1)
            first = rotations["alice"].state.epoch.key_id
            sas = established(charons.b)
            assert len(sas) == 1 and sas[0]["ppk"] == "yes"
            first_sa = sas[0]["uniqueid"]
            assert charons.a.ping_peer(), "no traffic through the tunnel of epoch 1"
            # the interval rotates: a fresh IKE SA with the next PPK replaces the first (make before break)
            await until("epoch 2", lambda: rotations["alice"].state.epoch.number == 2
                        and rotations["bob"].state.epoch.number == 2)
            second = rotations["alice"].state.epoch.key_id
            await until("one SA", lambda: [sa["uniqueid"] for sa in established(charons.b)] not in ([], [first_sa])
                        and len(established(charons.b)) == 1)
            assert established(charons.b)[0]["ppk"] == "yes"
            assert charons.a.ping_peer(), "no traffic through the tunnel of epoch 2"
            packets = sum(child["packets_in"] for sa in established(charons.b) for child in sa["children"].values())
            nursery.cancel_scope.cancel()
        return first, second, packets

    first, second, packets = trio.run(main)
    assert [first, second] == [keys[0][0], keys[1][0]]
    assert used_ppk_ids(charons.a)[-2:] == [first, second]       # the initiator's charon used each PPK in turn
    assert packets >= 2                                          # pings went through ESP (user-space, libipsec)
    for store in stores.values():                                # the first PPK's key is erased at both ends
        assert store.state(LINK_ID, first).value == "delivered"


@pytest.mark.root
def test_a_ppk_missing_at_the_responder_fails_closed_and_the_random_fallback_keeps_it_closed(charons):
    shared = key()
    initiator, responder = sink_for(charons.a, True), sink_for(charons.b, False)

    async def main():
        await responder.install(shared, Epoch(1, shared.key_id, 0.0))
        await initiator.install(shared, Epoch(1, shared.key_id, 0.0))
        assert [sa["ppk"] for sa in established(charons.b)] == ["yes"]
        # a key only the initiator has: ppk_required, so no IKE SA comes up with it
        lonely = key()
        with pytest.raises(ViciError, match="initiate"):
            await initiator.install(lonely, Epoch(2, lonely.key_id, 0.0))
        # the random fallback at both ends: the old SA is closed, and none comes up
        await responder.fall_back("random")
        await initiator.fall_back("random")
        assert established(charons.b) == []
        with pytest.raises(ViciError, match="initiate"):
            await initiator._reconnect()
        assert established(charons.a) == []
        # recovery: a fresh common key brings the SA back
        fresh = key()
        await responder.install(fresh, Epoch(3, fresh.key_id, 0.0))
        await initiator.install(fresh, Epoch(3, fresh.key_id, 0.0))
        return fresh.key_id

    fresh_id = trio.run(main)
    assert [sa["ppk"] for sa in established(charons.b)] == ["yes"]
    assert used_ppk_ids(charons.a)[-1] == fresh_id
    assert re.search(r"PPK required but no PPK found|no PPK for PPK_ID", charons.b.log())
    # only the newest PPKs of the consumer stay loaded in charon
    assert len(responder.loaded) <= 2 and responder.loaded[-1] == fresh_id


def shared_ids(end) -> set[str]:
    [answer] = _vici_call(str(end.vici), "get_shared")
    return {shared_id.decode() if isinstance(shared_id, bytes) else shared_id for shared_id in answer["keys"]}


@pytest.mark.root
def test_a_restarted_sink_unloads_the_ppks_an_earlier_run_left_in_charon(charons):
    """charon outlives a daemon killed with -9, and with it the PPKs that run loaded: the fallback of the
    restarted daemon (a fresh sink) unloads them, an expired key never stays loaded; another consumer's PPKs
    (a name this one's is a prefix of) are left alone."""
    first, second, others = key(), key(), key()
    dead = sink_for(charons.b, initiator=False)
    other = PpkSink(name=NAME + "-2", connection="qkd", initiator=False, vici_socket=charons.b.vici)

    async def main():
        await dead.install(first, Epoch(1, first.key_id, 0.0))
        await dead.install(second, Epoch(2, second.key_id, 0.0))
        await other.install(others, Epoch(1, others.key_id, 0.0))
        left = {f"qkdd-{NAME}-{first.key_id}", f"qkdd-{NAME}-{second.key_id}"}
        assert left <= shared_ids(charons.b)
        # restarted past the expiry with "random": only the fallback PPK of this consumer stays
        await sink_for(charons.b, initiator=False).fall_back("random")
        ids = shared_ids(charons.b)
        assert not left & ids and f"qkdd-{NAME}-qkdd-fallback-{NAME}" in ids
        # restarted again, "clear": nothing of this consumer stays, the other consumer's PPK does
        await sink_for(charons.b, initiator=False).fall_back("clear")
        ids = shared_ids(charons.b)
        assert not {shared for shared in ids if shared.startswith(f"qkdd-{NAME}-") and NAME + "-2" not in shared}
        assert f"qkdd-{NAME}-2-{others.key_id}" in ids
        await other.fall_back("clear")
        assert f"qkdd-{NAME}-2-{others.key_id}" not in shared_ids(charons.b)

    trio.run(main)

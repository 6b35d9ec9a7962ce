"""WireGuard PSK rotation on real tunnels: two namespaces joined by a veth pair, wireguard-go and wg in
each, and two qkdd daemons on a live simulated link, each driving its own interface.

The link is a real `[[links]]` entry with `driver = "sim"` at both ends: alice (source) runs the simulated
device's quantum channel on her veth address (`device_addr`), bob (detector) connects to it, and the
classical peer channel (alice `peer_listen`, bob `peer_addr`, ML-DSA-65 identities pinned both ways) runs
over the veth pair too; its peer session carries the WireGuard epoch records next to the link engine's
own. Frames are small and unpaced, so keys flow within seconds; every PSK the tests see installed is a key
the link produced (checked against both key stores). Key production is stopped for real through alice's
admin sim-control API (intercept-resend pushes the QBER past the threshold, the link halts). Rotations
are triggered with SIGUSR1 ("rotate now") because the configured interval cannot go below 30 s.
Needs root and /dev/net/tun (skips otherwise).
"""
from __future__ import annotations

import base64
import datetime
import json
import os
import re
import signal
import time
import uuid
from pathlib import Path

import pytest

import trio

from qkdd.config import WireGuardConfig
from qkdd.consumers.wg_tool import WgTool
from qkdd.consumers.wireguard import TunnelRotation, WireGuardChannel
from qkdd.hal.sim.settings import MAX_FRAME_SLOTS
from qkdd.keystore import KeyStore, create_kek
from qkdd.metrics import Metrics
from qkdd.peer import SessionClosedError, generate_identity, save_private_key, save_public_key
from qkdd.pki import init_pki
from qkdd.reservation.protocol import MessageType, Purpose
from tests.fallback_support import ATTACK, FIBER_CUT
from tests.reservation_support import reservation_service

from wireguard_support import (CmdlineWatcher, QkddInNetns, WgPair, files_containing, http_in_netns,
                               missing_requirements, parse_metric, wait_for)

pytestmark = pytest.mark.skipif(missing_requirements() is not None, reason=missing_requirements() or "")

LINK_ID = "wg-link"
TUNNEL = "site-a-b"
HOLDER = f"wireguard:{TUNNEL}"
PEER_PORT = 7443          # classical channel, on alice's veth address
QUANTUM_PORT = 7081       # the simulated devices' quantum channel, on alice's veth address
FRAME_DETECTIONS = 250_000      # as the link daemon tests: the smallest frames that yield key (finite-key bound)
KEY_WAIT_S = 60.0


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    wg_pair = WgPair(tmp_path_factory.mktemp("wg")).up()
    try:
        assert wg_pair.a.ping(), "the tunnel without PSK does not carry traffic"
        yield wg_pair
    finally:
        wg_pair.down()


@pytest.fixture
def fresh_pair(pair):
    """The module's tunnel with both PSKs removed and sessions dropped."""
    for end in (pair.a, pair.b):
        end.ns("wg", "set", end.interface, "peer", end.peer.public_key, "remove")
        end.add_peer(end.peer)
    yield pair
    for end in (pair.a, pair.b):     # a test that moved a control socket away puts it back
        held = end.socket_path.with_suffix(".held")
        if held.exists():
            os.replace(held, end.socket_path)


class Site:
    """One daemon's directory, identity, config and API (alice's API is mTLS with an admin client)."""

    def __init__(self, root: Path, name: str, end, role: str):
        self.dir = root / name
        self.state_dir = self.dir / "state"
        self.state_dir.mkdir(parents=True)
        self.end = end
        self.role = role
        self.kek = create_kek(str(self.state_dir / "kek"))   # where the daemon looks for its key-encryption key
        identity = generate_identity()
        save_private_key(identity, self.dir / "identity.pem")
        save_public_key(identity.public_key(), self.dir / "identity.pub")
        self.pki = init_pki(self.dir / "pki", ["localhost"], ["admin"]) if role == "alice" else None
        self.daemon: QkddInNetns | None = None

    def write_config(self, other: "Site", *, expiry_s: float, policy: str, key_expiry_s: float = 3600) -> Path:
        alice = self if self.role == "alice" else other
        if self.role == "alice":
            channel = f'peer_listen = "{self.end.veth_ip}:{PEER_PORT}"'
        else:
            channel = f'peer_addr = "{other.end.veth_ip}:{PEER_PORT}"'
        api_tls = ""
        if self.pki is not None:
            server = self.pki.kmes["localhost"]
            api_tls = (f'admin_clients = ["cn:admin"]\n[api.tls]\ncert_file = "{server.cert_file}"\n'
                       f'key_file = "{server.key_file}"\nclient_ca_file = "{self.pki.ca_cert_file}"\n'
                       'client_cert = "optional"\n')
        text = f'''
[daemon]
state_dir = "{self.state_dir}"
log_level = "debug"

[api]
listen = "127.0.0.1:0"
{api_tls}
[health]
listen = "127.0.0.1:0"

[[links]]
link_id = "{LINK_ID}"
role = "{self.role}"
driver = "sim"
{channel}
peer_key_file = "{self.dir / 'identity.pem'}"
peer_public_key = "{other.dir / 'identity.pub'}"
device_addr = "{alice.end.veth_ip}:{QUANTUM_PORT}"
key_expiry_s = {key_expiry_s}
frames_in_flight = 2

[links.sim]
distance_km = 25.0
frame_slots = {MAX_FRAME_SLOTS}
max_detections_per_frame = {FRAME_DETECTIONS}
realtime = false

[[wireguard]]
name = "{TUNNEL}"
link_id = "{LINK_ID}"
interface = "{self.end.interface}"
peer_public_key = "{self.end.peer.public_key}"
rotation_interval_s = {min(expiry_s, 3600)}
expiry_s = {expiry_s}
on_exhausted = "{policy}"
activation_delay_s = 1.0
retry_interval_s = 0.3
'''
        path = self.dir / "qkdd.toml"
        path.write_text(text)
        return path

    def start(self, other: "Site", **kwargs) -> QkddInNetns:
        self.daemon = QkddInNetns(self.end.netns, self.write_config(other, **kwargs), self.dir / "qkdd.log")
        return self.daemon.start()           # assigned first: a daemon that never gets ready is still stopped

    def _address(self, name: str) -> str:
        return re.findall(rf"{name}_address=(\S+)", self.daemon.log())[-1].strip('"')

    def metrics(self) -> str:
        status, text = http_in_netns(self.end.netns, "GET", f"http://{self._address('health')}/metrics")
        assert status == 200, text
        return text

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        """The daemon's API from inside its namespace (alice's over TLS with the admin certificate)."""
        host_port = self._address("api")
        if self.pki is None:
            status, text = http_in_netns(self.end.netns, method, f"http://{host_port}{path}", body)
        else:
            admin = self.pki.saes["admin"]
            port = host_port.rsplit(":", 1)[1]
            status, text = http_in_netns(self.end.netns, method, f"https://localhost:{port}{path}", body,
                                         cafile=str(self.pki.ca_cert_file), cert=str(admin.cert_file),
                                         key=str(admin.key_file))
        assert status == 200, (status, text)
        return json.loads(text)

    def link_metrics(self) -> dict:
        return self.api("GET", f"/v1/links/{LINK_ID}/metrics")

    def store(self) -> KeyStore:
        """The daemon's own key store file, opened beside it (SQLite WAL: readers do not block it)."""
        return KeyStore(str(self.state_dir / "keys.sqlite3"), self.kek)

    def key_in_use(self) -> tuple[str, bytes] | None:
        """The key id reserved for the tunnel and its material, from this site's key store; None while
        it holds more than one (the previous key is erased just after the next one is installed)."""
        store = self.store()
        try:
            reserved = store.reserved_for(LINK_ID, HOLDER)
            if len(reserved) != 1:
                return None
            return reserved[0], store.peek(LINK_ID, reserved[0]).material
        finally:
            store.close()


def start_sites(tmp_path, pair, **kwargs):
    """Both daemons on the live link; returns once alice's store holds keys the link produced."""
    alice = Site(tmp_path, "alice", pair.a, "alice")
    bob = Site(tmp_path, "bob", pair.b, "bob")
    try:
        alice.start(bob, **kwargs)
        bob.start(alice, **kwargs)
        wait_for("keys from the live link at both ends", lambda: all(
            site.link_metrics()["keys_stored"].get("available", 0) > 0 for site in (alice, bob)),
            timeout_s=KEY_WAIT_S, interval_s=0.3)
    except BaseException:
        stop_sites(alice, bob)                 # the caller never gets them to stop
        raise
    return alice, bob


def stop_sites(*sites):
    for site in sites:
        if site is not None and site.daemon is not None:
            site.daemon.stop()


def agreed_psk(pair, previous: str | None = None, timeout_s: float = 20.0) -> str:
    """Wait until both ends hold the same PSK (different from `previous`) and return it."""
    def same():
        a, b = pair.a.psk(), pair.b.psk()
        return a if a == b and a != "(none)" and a != previous else None
    return wait_for("both ends to hold the same new PSK", same, timeout_s=timeout_s)


def assert_from_the_link(psk: str, *sites: Site) -> tuple[str, bytes]:
    """The installed PSK is the key both stores hold reserved for the tunnel (same id, same material)."""
    in_use = [wait_for(f"{site.role} to hold one key for the tunnel", site.key_in_use, timeout_s=5)
              for site in sites]
    assert len({key_id for key_id, _ in in_use}) == 1, [key_id for key_id, _ in in_use]
    material = in_use[0][1]
    assert all(m == material for _, m in in_use)
    assert base64.b64encode(material).decode() == psk
    return in_use[0]


def install_times(log: str) -> dict[int, float]:
    """Epoch number -> Unix time of its "epoch N installed" log line."""
    times = {}
    for stamp, epoch in re.findall(r'ts=(\S+) .*msg="tunnel [^:]+: epoch (\d+) installed', log):
        times[int(epoch)] = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return times


def handshake_works(pair, attempts: int = 2) -> bool:
    """Force a fresh handshake (the peer's sessions are dropped first), then ping through the tunnel; a
    second try when the first gets no answer (wireguard-go in user space can miss a 2 s ping window on a
    loaded host), so a False means two handshakes in a row failed."""
    for _ in range(attempts):
        pair.a.force_handshake()
        if pair.a.ping(count=2, wait_s=2) and pair.a.latest_handshake() > 0:
            return True
    return False


def test_rotations_keep_the_tunnel_up_and_the_key_never_leaks(fresh_pair, tmp_path):
    pair = fresh_pair
    alice = bob = None
    used: list[tuple[str, bytes]] = []          # (key id, material) of every PSK installed
    with CmdlineWatcher() as watcher:
        try:
            alice, bob = start_sites(tmp_path, pair, expiry_s=3600, policy="clear")
            seen = [agreed_psk(pair)]                      # epoch 1 comes once keys flow
            used.append(assert_from_the_link(seen[-1], alice, bob))
            assert handshake_works(pair)
            for _ in range(3):
                alice.daemon.rotate_now()
                seen.append(agreed_psk(pair, previous=seen[-1]))
                used.append(assert_from_the_link(seen[-1], alice, bob))
                assert handshake_works(pair), f"no traffic after rotation {len(seen) - 1}"
            assert len(set(seen)) == len(seen) == 4
            metrics = alice.metrics()
            assert parse_metric(metrics, "qkd_wireguard_psk_rotations_total", tunnel=TUNNEL, result="success") == 4
            assert parse_metric(metrics, "qkd_wireguard_psk_age_seconds", tunnel=TUNNEL) is not None
            handshake_age = wait_for("the handshake-age gauge", lambda: parse_metric(
                alice.metrics(), "qkd_wireguard_handshake_age_seconds", tunnel=TUNNEL, interface=pair.a.interface,
                peer=pair.b.public_key) is not None, timeout_s=12, interval_s=0.5)
            assert handshake_age
            age_s = parse_metric(alice.metrics(), "qkd_wireguard_handshake_age_seconds", tunnel=TUNNEL)
            assert 0 <= age_s < 30
            # every earlier PSK is erased from both stores (delivered to nobody), only the current one is held
            for site in (alice, bob):
                store = site.store()
                try:
                    assert store.reserved_for(LINK_ID, HOLDER) == [used[-1][0]]
                    assert [store.state(LINK_ID, key_id).value for key_id, _ in used[:-1]] == ["delivered"] * 3
                finally:
                    store.close()
        finally:
            stop_sites(alice, bob)
    assert watcher.scans > 10
    secrets = [material for _, material in used]
    assert watcher.hits(secrets) == []
    installed = [install_times(site.daemon.log()) for site in (alice, bob)]
    assert sorted(installed[0]) == sorted(installed[1]) == [1, 2, 3, 4]
    for epoch in range(1, 5):                      # both ends switch within moments of each other
        assert abs(installed[0][epoch] - installed[1][epoch]) < 1.0, (epoch, installed)
    assert files_containing(tmp_path, secrets) == []       # the logs, state files, configs and the key stores
    assert files_containing(Path("/var/run/wireguard"), secrets) == []


def test_a_held_back_end_breaks_the_next_handshake_until_it_catches_up(fresh_pair, tmp_path):
    pair = fresh_pair
    alice = bob = None
    try:
        alice, bob = start_sites(tmp_path, pair, expiry_s=3600, policy="clear")
        first = agreed_psk(pair)
        assert handshake_works(pair)
        # Hold bob back: his `wg set` cannot reach wireguard-go while its control socket is moved away.
        held = pair.b.socket_path.with_suffix(".held")
        os.replace(pair.b.socket_path, held)
        alice.daemon.rotate_now()
        wait_for("alice to install the new PSK", lambda: pair.a.psk() != first)
        wait_for("bob's failed install to be retried",
                 lambda: bob.daemon.log().count("installing epoch 2 failed") >= 2)
        assert not handshake_works(pair), "the handshake succeeded with different PSKs"
        os.replace(held, pair.b.socket_path)
        assert_from_the_link(agreed_psk(pair, previous=first), alice, bob)
        time.sleep(1.1)
        assert wait_for("the tunnel to recover", lambda: handshake_works(pair), timeout_s=10, interval_s=0.5)
        assert parse_metric(bob.metrics(), "qkd_wireguard_psk_rotations_total", tunnel=TUNNEL,
                            result="install_failed") >= 2
    finally:
        stop_sites(alice, bob)


def test_a_restarted_end_reapplies_the_current_key(fresh_pair, tmp_path):
    pair = fresh_pair
    alice = bob = None
    try:
        alice, bob = start_sites(tmp_path, pair, expiry_s=3600, policy="clear")
        current = agreed_psk(pair)
        bob.daemon.stop(signal.SIGKILL)
        pair.b.add_peer(pair.a)                   # the interface forgot its PSK meanwhile
        assert pair.b.psk() == "(none)"
        # a proposal bob agreed to just before he died, never installed: erased at start, never reused
        store = bob.store()
        in_use = store.reserved_for(LINK_ID, HOLDER)
        stale = [key_id for key_id, state in store.inventory(LINK_ID).items() if state.value == "available"][0]
        store.reserve_ids(LINK_ID, [stale], HOLDER)
        store.close()
        bob.daemon.start()
        assert wait_for("bob to re-apply the PSK", lambda: pair.b.psk() == current)
        assert handshake_works(pair)
        assert_from_the_link(current, alice, bob)
        store = bob.store()
        try:
            assert store.state(LINK_ID, stale).value == "delivered"
            assert store.reserved_for(LINK_ID, HOLDER) == in_use
        finally:
            store.close()
        # the link itself came back with him: keys flow again at both ends
        generated = alice.link_metrics()["keys_generated"]
        wait_for("new keys after bob's restart", lambda: alice.link_metrics()["keys_generated"] > generated,
                 timeout_s=KEY_WAIT_S, interval_s=0.5)
    finally:
        stop_sites(alice, bob)


@pytest.mark.parametrize(("policy", "knob", "dead"), [("clear", ATTACK, "bob"), ("random", FIBER_CUT, "alice")],
                         ids=["clear-attack-bob-killed", "random-fiber-cut-alice-killed"])
def test_expiry_applies_the_policy(fresh_pair, tmp_path, policy, knob, dead):
    """Key production stops for real: the simulator's knob (intercept-resend, or a fiber cut of 60 dB, through
    alice's admin API) pushes the QBER past the threshold and the link halts; the keys stored before expire
    after `key_expiry_s`, the PSK in use after `psk_expiry_s`. Frames started before the halt may still
    finish and store a key: the leader then rightly takes it when the PSK expires, so the test waits for the
    fallback that finds no key left. `dead`'s daemon is killed (-9) after the halt: past the PSK's expiry the
    survivor keeps it (a one-sided fallback would break the tunnel) and the two interfaces still agree; the
    dead end, restarted after the expiry (alice with the knob still on), applies the policy at once (never
    re-installs the expired PSK) and the survivor follows once they meet. With the knob off keys flow again:
    the leader's next attempt takes one and the tunnel comes back with a fresh PSK."""
    key_expiry_s, psk_expiry_s = 2, 30          # check-config: expiry_s at least the rotation interval (>= 30 s)
    pair = fresh_pair
    alice = bob = None
    survivor_role = "alice" if dead == "bob" else "bob"

    def no_key_count() -> float:
        return parse_metric(alice.metrics(), "qkd_wireguard_psk_rotations_total", tunnel=TUNNEL,
                            result="no_key") or 0

    def fell_back(site: Site) -> bool:         # the fallback came after the last epoch it installed
        log = site.daemon.log()
        return log.rfind(f"fallback {policy} applied") > log.rfind(" installed on ")

    try:
        alice, bob = start_sites(tmp_path, pair, expiry_s=psk_expiry_s, policy=policy, key_expiry_s=key_expiry_s)
        sites = {"alice": alice, "bob": bob}
        qkd_psk = agreed_psk(pair)
        no_key_before = no_key_count()          # the leader tried before keys flowed at start
        assert handshake_works(pair)
        control = f"/v1/links/{LINK_ID}/sim/{knob.route}"
        alice.api("POST", control, knob.on)
        wait_for("the link to halt", lambda: alice.link_metrics()["state"] == "halted", timeout_s=20, interval_s=0.3)
        sites[dead].daemon.stop(signal.SIGKILL)
        kept = pair.a.psk()

        def survivor_tunnel() -> dict:
            return sites[survivor_role].api("GET", "/v1/links")["links"][0]["consumers"][0]
        wait_for("the PSK to expire at the survivor", lambda: survivor_tunnel()["kept_past_expiry"],
                 timeout_s=4 * psk_expiry_s, interval_s=0.3)
        assert survivor_tunnel()["fallback"] is None and pair.a.psk() == kept == pair.b.psk() != "(none)"
        assert handshake_works(pair), "the survivor keeps the PSK the dead end's interface holds"
        config = sites[dead].daemon.config_path
        text = config.read_text()
        if dead == "alice":                    # the simulated fiber runs in alice's daemon: the knob stays on
            config.write_text(knob.on_in_config(text))
            no_key_before = 0                  # (a fresh process counts from zero)
        try:
            sites[dead].daemon.start()
        finally:
            config.write_text(text)
        wait_for("the dead end's fallback at start",
                 lambda: "expired while the daemon was down" in sites[dead].daemon.run_log(), timeout_s=30,
                 interval_s=0.3)
        assert "re-applying epoch" not in sites[dead].daemon.run_log()
        wait_for("the fallback with no key left", lambda: fell_back(alice) and fell_back(bob)
                 and no_key_count() > no_key_before, timeout_s=4 * psk_expiry_s, interval_s=0.3)
        assert not survivor_tunnel()["kept_past_expiry"]
        epochs = len(install_times(alice.daemon.run_log()))
        psk_a, psk_b = pair.a.psk(), pair.b.psk()
        if policy == "clear":
            assert psk_a == psk_b == "(none)"
            assert handshake_works(pair), "Curve25519-only fallback must keep the tunnel up"
        else:
            assert "(none)" not in (psk_a, psk_b) and qkd_psk not in (psk_a, psk_b) and psk_a != psk_b
            assert not handshake_works(pair), "a random PSK must make the tunnel fail closed"
        metrics = alice.metrics()
        assert parse_metric(metrics, "qkd_wireguard_psk_rotations_total", tunnel=TUNNEL,
                            result=f"expired_{policy}") == max(epochs, 1)    # (a restarted alice: the one at start)
        assert parse_metric(metrics, "qkd_wireguard_psk_age_seconds", tunnel=TUNNEL) is None
        wait_for("the link to stay halted", lambda: alice.link_metrics()["state"] in ("halted", "fallback"),
                 timeout_s=20, interval_s=0.3)                # (gate DEGRADED after 60 s: "fallback")
        assert pair.a.psk() == psk_a and pair.b.psk() == psk_b        # the fallback stays while no key comes
        # Keys flow again: the leader's next attempt (every few seconds) takes one, the tunnel comes back.
        alice.api("POST", control, knob.off)
        fresh = agreed_psk(pair, previous=psk_a, timeout_s=KEY_WAIT_S)
        assert fresh not in (qkd_psk, psk_b)
        assert_from_the_link(fresh, alice, bob)
        assert handshake_works(pair)
        for site in (alice, bob):
            assert "traceback=" not in site.daemon.log()     # no task failed along the way (e.g. the frame channel)
    finally:
        stop_sites(alice, bob)


# ---- the rotation timer and a lost session, in process ---------------------------------------------
# Two TunnelRotation objects in this process drive the same two wireguard-go interfaces through real
# `wg` (wireguard-go's control sockets are reachable from any namespace). The classical channel between
# them is an in-memory pair of streams standing in for a peer session (the real one is used above):
# that lets the test cut the session at a chosen moment and run the timer below the 30 s config floor.
# Each holds its own SQLite key store with the same keys stored directly (no link engine runs here).

class MemoryStream:
    def __init__(self, outgoing, incoming):
        self.session = type("Session", (), {"link_id": LINK_ID})()
        self._outgoing, self._incoming = outgoing, incoming
        self.cut_before_ack = None          # a callable: the next ACK is swallowed and the session cut

    async def send(self, payload: bytes) -> None:
        if self.cut_before_ack is not None and _holds_an_epoch_acceptance(payload):
            self.cut_before_ack()
            await trio.sleep_forever()
        try:
            await self._outgoing.send(payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise SessionClosedError("memory session closed") from None

    async def receive(self) -> bytes:
        try:
            return await self._incoming.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise SessionClosedError("memory session closed") from None

    async def serve_inline(self, on_payload) -> None:
        """As MuxStream.serve_inline: every payload to `on_payload` in order, until the stream ends."""
        while True:
            await on_payload(await self.receive())


def _holds_an_epoch_acceptance(payload: bytes) -> bool:
    """Whether a reservation payload (messages back to back: version, type, purpose, request id 16 bytes,
    body length u32, body) holds an ACCEPT of purpose WG_EPOCH."""
    at = 0
    while at + 23 <= len(payload):
        if payload[at + 1] == MessageType.ACCEPT and payload[at + 2] == Purpose.WG_EPOCH:
            return True
        at += 23 + int.from_bytes(payload[at + 19:at + 23], "big")
    return False


def stream_pair():
    a_out, b_in = trio.open_memory_channel(16)
    b_out, a_in = trio.open_memory_channel(16)
    return MemoryStream(a_out, a_in), MemoryStream(b_out, b_in)


def make_rotation(tmp_path, end, role: str, keys, interval_s: float) -> TunnelRotation:
    state_dir = tmp_path / role
    state_dir.mkdir()
    store = KeyStore(str(state_dir / "keys.sqlite3"), os.urandom(32))
    store.put_pending(LINK_ID, 1, keys, expires_at=time.time() + 3600, allocatable=[role == "alice"] * len(keys))
    store.commit_frame(LINK_ID, 1)
    config = WireGuardConfig(name=TUNNEL, link_id=LINK_ID, interface=end.interface,
                             peer_public_key=end.peer.public_key, activation_delay_s=0.3, retry_interval_s=0.2)
    return TunnelRotation(config, leader=role == "alice", store=store, wg=WgTool(end.interface, end.peer.public_key),
                          metrics=Metrics().tunnel(TUNNEL, end.interface, end.peer.public_key),
                          state_dir=str(state_dir), rotation_interval_s=interval_s)


def test_the_interval_drives_rotation_and_a_lost_ack_is_resynchronised(fresh_pair, tmp_path):
    pair = fresh_pair
    keys = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(12)]
    alice = make_rotation(tmp_path, pair.a, "alice", keys, interval_s=1.5)
    bob = make_rotation(tmp_path, pair.b, "bob", keys, interval_s=1.5)

    async def session(a_stream, b_stream, *, task_status=trio.TASK_STATUS_IGNORED):
        with trio.CancelScope() as scope:
            task_status.started(scope)
            async with trio.open_nursery() as nursery:
                for rotation, stream in ((alice, a_stream), (bob, b_stream)):
                    service, serve = reservation_service(LINK_ID)
                    WireGuardChannel([rotation]).attach_to(service)
                    nursery.start_soon(serve, stream)

    async def until(what, predicate, timeout_s=15):
        with trio.fail_after(timeout_s):
            while not predicate():
                await trio.sleep(0.05)

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(alice.run)
            nursery.start_soon(bob.run)
            a_stream, b_stream = stream_pair()
            scope = await nursery.start(session, a_stream, b_stream)
            # epoch 1 at once, then one per 1.5 s from the timer alone
            await until("epoch 3", lambda: bob.state.epoch.number >= 3 and alice.state.epoch == bob.state.epoch)
            assert await trio.to_thread.run_sync(pair.a.psk) == await trio.to_thread.run_sync(pair.b.psk)
            # The next ACK is lost with the session: bob agreed to an epoch alice never hears of.
            lost_at = bob.agreement.current.number
            b_stream.cut_before_ack = scope.cancel
            await until("the cut", lambda: bob.agreement.current.number == lost_at + 1 and alice._service is None)
            assert alice.agreement.current.number == lost_at
            # A new session: the HELLOs differ, alice proposes above both, both end on the same epoch.
            a_stream, b_stream = stream_pair()
            await nursery.start(session, a_stream, b_stream)
            await until("resynchronised", lambda: bob.state.epoch.number >= lost_at + 2
                        and alice.state.epoch == bob.state.epoch)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert pair.a.psk() == pair.b.psk() != "(none)"
    assert handshake_works(pair)
    # Only the key in use is still held at either end; every earlier one is erased (never reused).
    for rotation in (alice, bob):
        reserved = [key_id for key_id, state in rotation.store.inventory(LINK_ID).items() if state.value == "reserved"]
        assert reserved == [rotation.state.epoch.key_id]

"""WireGuard PSK rotation on real tunnels: two namespaces, wireguard-go and wg in each, two qkdd daemons
(alice leads, bob follows) talking over the veth pair's classical channel, each driving its own interface.

Keys: the daemons run the link engine (whose peer session carries the WireGuard channel), but their
simulated devices sit in different namespaces and never reach each other, so each test seeds both daemons' key stores
with the same keys (same ids, same material; alice's copies allocatable, bob's only by id) through the
real KeyStore API into each daemon's own SQLite file before starting it. Rotations are triggered with
SIGUSR1 ("rotate now") because the configured interval cannot go below 30 s.
Needs root and /dev/net/tun (skips otherwise).
"""
from __future__ import annotations

import base64
import datetime
import os
import re
import signal
import time
from pathlib import Path

import pytest

import trio

from qkdd.config import WireGuardConfig
from qkdd.consumers.wg_epoch import MessageType, decode
from qkdd.consumers.wg_tool import WgTool
from qkdd.consumers.wireguard import TunnelRotation, WireGuardChannel
from qkdd.keystore import KeyStore, create_kek
from qkdd.metrics import Metrics
from qkdd.peer import SessionClosedError, generate_identity, save_private_key, save_public_key

from wireguard_support import (CmdlineWatcher, QkddInNetns, WgPair, files_containing, missing_requirements,
                                     new_key_ids, parse_metric, wait_for)

pytestmark = pytest.mark.skipif(missing_requirements() is not None, reason=missing_requirements() or "")

LINK_ID = "wg-link"
TUNNEL = "site-a-b"
PEER_PORT = 7443


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
    def __init__(self, root: Path, name: str, end, role: str):
        self.dir = root / name
        self.state_dir = self.dir / "state"
        self.state_dir.mkdir(parents=True)
        self.end = end
        self.role = role
        self.kek_path = self.state_dir / "kek"         # where the daemon looks for its key-encryption key
        self.kek = create_kek(str(self.kek_path))
        self.identity = generate_identity()
        save_private_key(self.identity, self.dir / "identity.pem")
        save_public_key(self.identity.public_key(), self.dir / "identity.pub")
        self.daemon: QkddInNetns | None = None

    def seed(self, keys: list[tuple[str, bytes]], frame_id: int = 1) -> None:
        """Store `keys` as one committed frame (also while the daemon runs: SQLite WAL, one writer at a time)."""
        store = KeyStore(str(self.state_dir / "keys.sqlite3"), self.kek)
        try:
            store.put_pending(LINK_ID, frame_id, keys, expires_at=time.time() + 3600,
                              allocatable=[self.role == "alice"] * len(keys))
            store.commit_frame(LINK_ID, frame_id)
        finally:
            store.close()

    def write_config(self, other: "Site", *, expiry_s: float, policy: str) -> Path:
        if self.role == "alice":
            channel = f'peer_listen = "{self.end.veth_ip}:{PEER_PORT}"'
        else:
            channel = f'peer_addr = "{other.end.veth_ip}:{PEER_PORT}"'
        text = f'''
[daemon]
state_dir = "{self.state_dir}"
log_level = "debug"

[api]
listen = "127.0.0.1:0"

[health]
listen = "127.0.0.1:0"

[[links]]
link_id = "{LINK_ID}"
role = "{self.role}"
driver = "sim"
{channel}
peer_key_file = "{self.dir / 'identity.pem'}"
peer_public_key = "{other.dir / 'identity.pub'}"

[[wireguard]]
name = "{TUNNEL}"
link_id = "{LINK_ID}"
interface = "{self.end.interface}"
peer_public_key = "{self.end.peer.public_key}"
expiry_s = {expiry_s}
on_exhausted = "{policy}"
activation_delay_s = 1.0
retry_interval_s = 0.3
'''
        path = self.dir / "qkdd.toml"
        path.write_text(text)
        return path

    def start(self, other: "Site", **kwargs) -> QkddInNetns:
        self.daemon = QkddInNetns(self.end.netns, self.write_config(other, **kwargs), self.dir / "qkdd.log").start()
        return self.daemon

    def metrics(self) -> str:
        match = re.findall(r"health_address=(\S+)", self.daemon.log())
        host_port = match[-1].strip('"')
        return self.end.ns("python3", "-c", f"import urllib.request;print(urllib.request.urlopen("
                                            f"'http://{host_port}/metrics', timeout=5).read().decode())")


def start_sites(tmp_path, pair, key_count: int, **kwargs):
    keys = [(key_id, os.urandom(32)) for key_id in new_key_ids(key_count)]
    alice = Site(tmp_path, "alice", pair.a, "alice")
    bob = Site(tmp_path, "bob", pair.b, "bob")
    for site in (alice, bob):
        site.seed(keys)
    alice.start(bob, **kwargs)
    bob.start(alice, **kwargs)
    return alice, bob, keys


def stop_sites(*sites):
    for site in sites:
        if site.daemon is not None:
            site.daemon.stop()


def agreed_psk(pair, previous: str | None = None) -> str:
    """Wait until both ends hold the same PSK (different from `previous`) and return it."""
    def same():
        a, b = pair.a.psk(), pair.b.psk()
        return a if a == b and a != "(none)" and a != previous else None
    return wait_for("both ends to hold the same new PSK", same)


def install_times(log: str) -> dict[int, float]:
    """Epoch number -> Unix time of its "epoch N installed" log line."""
    times = {}
    for stamp, epoch in re.findall(r'ts=(\S+) .*msg="tunnel [^:]+: epoch (\d+) installed', log):
        times[int(epoch)] = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return times


def handshake_works(pair) -> bool:
    """Force a fresh handshake (the peer's sessions are dropped first), then ping through the tunnel."""
    pair.a.force_handshake()
    return pair.a.ping(count=2, wait_s=2) and pair.a.latest_handshake() > 0


def test_rotations_keep_the_tunnel_up_and_the_key_never_leaks(fresh_pair, tmp_path):
    pair = fresh_pair
    alice = bob = None
    keys = [(key_id, os.urandom(32)) for key_id in new_key_ids(6)]
    with CmdlineWatcher([material for _, material in keys]) as watcher:
        try:
            alice = Site(tmp_path, "alice", pair.a, "alice")
            bob = Site(tmp_path, "bob", pair.b, "bob")
            for site in (alice, bob):
                site.seed(keys)
            alice.start(bob, expiry_s=3600, policy="clear")
            bob.start(alice, expiry_s=3600, policy="clear")
            seen = [agreed_psk(pair)]                      # epoch 1 comes at start
            assert handshake_works(pair)
            for _ in range(3):
                alice.daemon.rotate_now()
                seen.append(agreed_psk(pair, previous=seen[-1]))
                assert handshake_works(pair), f"no traffic after rotation {len(seen) - 1}"
            assert len(set(seen)) == len(seen) == 4
            materials = {base64.b64encode(m).decode() for _, m in keys}
            assert set(seen) <= materials                   # every PSK was one of the QKD keys
            metrics = alice.metrics()
            assert parse_metric(metrics, "qkd_wireguard_psk_rotations_total", tunnel=TUNNEL, result="success") == 4
            assert parse_metric(metrics, "qkd_wireguard_psk_age_seconds", tunnel=TUNNEL) is not None
            handshake_age = wait_for("the handshake-age gauge", lambda: parse_metric(
                alice.metrics(), "qkd_wireguard_handshake_age_seconds", tunnel=TUNNEL, interface=pair.a.interface,
                peer=pair.b.public_key) is not None, timeout_s=12, interval_s=0.5)
            assert handshake_age
            age_s = parse_metric(alice.metrics(), "qkd_wireguard_handshake_age_seconds", tunnel=TUNNEL)
            assert 0 <= age_s < 30
        finally:
            stop_sites(alice, bob)
    assert watcher.scans > 10
    assert watcher.hits == []
    secrets = [material for _, material in keys]
    installed = [install_times(site.daemon.log()) for site in (alice, bob)]
    assert sorted(installed[0]) == sorted(installed[1]) == [1, 2, 3, 4]
    for epoch in range(1, 5):                      # both ends switch within moments of each other
        assert abs(installed[0][epoch] - installed[1][epoch]) < 1.0, (epoch, installed)
    assert files_containing(tmp_path, secrets) == []       # the logs, state files, configs and the key stores
    assert files_containing(Path("/var/run/wireguard"), secrets) == []


def test_a_held_back_end_breaks_the_next_handshake_until_it_catches_up(fresh_pair, tmp_path):
    pair = fresh_pair
    alice, bob, _ = start_sites(tmp_path, pair, 4, expiry_s=3600, policy="clear")
    try:
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
        agreed_psk(pair, previous=first)
        time.sleep(1.1)
        assert wait_for("the tunnel to recover", lambda: handshake_works(pair), timeout_s=10, interval_s=0.5)
        assert parse_metric(bob.metrics(), "qkd_wireguard_psk_rotations_total", tunnel=TUNNEL,
                            result="install_failed") >= 2
    finally:
        stop_sites(alice, bob)


def test_a_restarted_end_reapplies_the_current_key(fresh_pair, tmp_path):
    pair = fresh_pair
    alice, bob, _ = start_sites(tmp_path, pair, 3, expiry_s=3600, policy="clear")
    try:
        current = agreed_psk(pair)
        bob.daemon.stop(signal.SIGKILL)
        pair.b.add_peer(pair.a)                   # the interface forgot its PSK meanwhile
        assert pair.b.psk() == "(none)"
        # a proposal bob agreed to just before he died, never installed: erased at start, never reused
        store = KeyStore(str(bob.state_dir / "keys.sqlite3"), bob.kek)
        in_use = store.reserved_for(LINK_ID, f"wireguard:{TUNNEL}")
        stale = [key_id for key_id, state in store.inventory(LINK_ID).items() if state.value == "available"][0]
        store.reserve_ids(LINK_ID, [stale], f"wireguard:{TUNNEL}")
        store.close()
        bob.daemon.start()
        assert wait_for("bob to re-apply the PSK", lambda: pair.b.psk() == current)
        assert handshake_works(pair)
        store = KeyStore(str(bob.state_dir / "keys.sqlite3"), bob.kek)
        try:
            assert store.state(LINK_ID, stale).value == "delivered"
            assert store.reserved_for(LINK_ID, f"wireguard:{TUNNEL}") == in_use
        finally:
            store.close()
    finally:
        stop_sites(alice, bob)


@pytest.mark.parametrize("policy", ["clear", "random"])
def test_expiry_applies_the_policy(fresh_pair, tmp_path, policy):
    pair = fresh_pair
    alice, bob, _ = start_sites(tmp_path, pair, 1, expiry_s=3, policy=policy)   # one key: no rotation after it
    try:
        qkd_psk = agreed_psk(pair)
        assert handshake_works(pair)
        for site in (alice, bob):
            wait_for(f"{site.role}'s fallback", lambda: f"fallback {policy} applied" in site.daemon.log())
        psk_a, psk_b = pair.a.psk(), pair.b.psk()
        if policy == "clear":
            assert psk_a == psk_b == "(none)"
            assert handshake_works(pair), "Curve25519-only fallback must keep the tunnel up"
        else:
            assert "(none)" not in (psk_a, psk_b) and qkd_psk not in (psk_a, psk_b) and psk_a != psk_b
            assert not handshake_works(pair), "a random PSK must make the tunnel fail closed"
        metrics = alice.metrics()
        assert parse_metric(metrics, "qkd_wireguard_psk_rotations_total", tunnel=TUNNEL,
                            result=f"expired_{policy}") == 1
        assert parse_metric(metrics, "qkd_wireguard_psk_age_seconds", tunnel=TUNNEL) is None
        wait_for("the leader to look for a fresh key", lambda: parse_metric(
            alice.metrics(), "qkd_wireguard_psk_rotations_total", tunnel=TUNNEL, result="no_key") >= 1,
            timeout_s=10, interval_s=0.3)
        if policy == "random":
            # Keys flow again: the leader's next attempt (every few seconds) takes one, the tunnel comes back.
            fresh = [(key_id, os.urandom(32)) for key_id in new_key_ids(1)]
            for site in (alice, bob):
                site.seed(fresh, frame_id=2)
            assert agreed_psk(pair) == base64.b64encode(fresh[0][1]).decode()
            assert handshake_works(pair)
    finally:
        stop_sites(alice, bob)


# ---- the rotation timer and a lost session, in process ---------------------------------------------
# Two TunnelRotation objects in this process drive the same two wireguard-go interfaces through real
# `wg` (wireguard-go's control sockets are reachable from any namespace). The classical channel between
# them is an in-memory pair of streams standing in for a peer session (the real one is used above):
# that lets the test cut the session at a chosen moment and run the timer below the 30 s config floor.

class MemoryStream:
    def __init__(self, outgoing, incoming):
        self.session = type("Session", (), {"link_id": LINK_ID})()
        self._outgoing, self._incoming = outgoing, incoming
        self.cut_before_ack = None          # a callable: the next ACK is swallowed and the session cut

    async def send(self, payload: bytes) -> None:
        if self.cut_before_ack is not None and decode(payload, TUNNEL).type is MessageType.ACK:
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
    keys = [(key_id, os.urandom(32)) for key_id in new_key_ids(12)]
    alice = make_rotation(tmp_path, pair.a, "alice", keys, interval_s=1.5)
    bob = make_rotation(tmp_path, pair.b, "bob", keys, interval_s=1.5)

    async def session(a_stream, b_stream, *, task_status=trio.TASK_STATUS_IGNORED):
        with trio.CancelScope() as scope:
            task_status.started(scope)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(WireGuardChannel([alice]).serve, a_stream)
                nursery.start_soon(WireGuardChannel([bob]).serve, b_stream)

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
            await until("the cut", lambda: bob.agreement.current.number == lost_at + 1 and alice._stream is None)
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

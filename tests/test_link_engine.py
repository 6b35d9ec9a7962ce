"""Two link engines in one process over real parts: TLS peer channel with ML-DSA-65 pinned keys, the sim
source and detector over a real TCP quantum channel, SQLite key stores in a temporary directory."""
import sqlite3

import trio

from qkdd.hal.sim import Attack, SimParams
from qkdd.hal.sim.driver import SimAliceDevice, SimBobDevice
from qkdd.hal.sim.settings import MAX_FRAME_SLOTS
from qkdd.keystore import KeyState, KeyStore
from qkdd.link.engine import BOB_BUFFER_FRAMES, LinkEngine
from qkdd.peer import PeerConnector, generate_identity
from tests.link_support import TEST_DETECTIONS, TEST_SOURCE
from tests.peer_harness import fast_settings

LINK = "link-ab"


async def start_pair(nursery, tmp_path, *, distance_km=25.0, detections=TEST_DETECTIONS, before_start=None,
                     **peer_settings):
    alice_id, bob_id = generate_identity(), generate_identity()
    source = SimAliceDevice(SimParams(distance_km=distance_km, **TEST_SOURCE), listen_port=0,
                            frame_slots=MAX_FRAME_SLOTS, max_detections=detections, realtime=False, seed=11)
    stores = {}
    for role in ("alice", "bob"):
        stores[role] = KeyStore(str(tmp_path / f"{role}.db"), bytes(32))
    if before_start is not None:
        before_start(stores)

    def alice_connector(on_session):
        return PeerConnector(fast_settings(LINK, listen=("127.0.0.1", 0), **peer_settings), alice_id,
                             bob_id.public_key(), on_session)

    alice = LinkEngine(LINK, "alice", source, stores["alice"], connector_factory=alice_connector)
    await nursery.start(alice.run)          # also starts the source's quantum-channel listener
    peer_port, quantum_port = alice.connector.listen_port, source.address[1]

    def bob_connector(on_session):
        return PeerConnector(fast_settings(LINK, dial=("127.0.0.1", peer_port), **peer_settings), bob_id,
                             alice_id.public_key(), on_session)

    bob = LinkEngine(LINK, "bob", SimBobDevice(host="127.0.0.1", port=quantum_port), stores["bob"],
                     connector_factory=bob_connector)
    await nursery.start(bob.run)
    return alice, bob, source, stores


def frame_in_file(store, key_id):
    with sqlite3.connect(store.path) as db:
        return db.execute("SELECT frame_id FROM keys WHERE key_id = ?", (key_id,)).fetchone()[0]


async def wait_for(predicate, timeout_s=60.0):
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.05)


def test_two_engines_store_the_same_keys_and_deliver_across(tmp_path):
    async def main():
        async with trio.open_nursery() as nursery:
            alice, bob, source, stores = await start_pair(nursery, tmp_path)
            peak = {"alice": 0, "bob": 0}

            async def watch_buffers():               # both ends' frame buffers stay bounded
                while True:
                    peak["alice"] = max(peak["alice"], len(alice._frames))
                    peak["bob"] = max(peak["bob"], bob._bob_frames_out.statistics().current_buffer_used)
                    await trio.sleep(0.01)
            nursery.start_soon(watch_buffers)
            await wait_for(lambda: alice.totals["keys"] >= 100 and bob.totals["keys"] >= 100)
            await wait_for(lambda: alice.frames_done >= 2)
            for engine in (alice, bob):              # each device reports what its engine measured
                status = await engine.device.channel_status()
                assert status.key_rate_bps > 0 and status.qber == engine.qber_history[-1].qber
            assert 0 < peak["alice"] <= alice._frames_capacity and peak["bob"] <= BOB_BUFFER_FRAMES
            assert alice.frames_unpaired <= 1        # device frames are paired, none stall and age out
            # every key either end committed is stored identically at the other end
            a_inv, b_inv = stores["alice"].inventory(LINK), stores["bob"].inventory(LINK)
            committed = [k for k, s in a_inv.items() if s is KeyState.AVAILABLE]
            assert len(committed) >= 100
            for key_id in committed[:50]:
                if b_inv.get(key_id) in (KeyState.AVAILABLE, KeyState.PENDING):
                    assert stores["alice"].peek(LINK, key_id).material == stores["bob"].peek(LINK, key_id).material
            # a key handed out at Alice is fetched once at Bob, same bytes
            got = []
            for bits in (256, 128, 8):
                key = await alice.request_key(bits)
                fetched = await bob.fetch_key(key.key_id)
                assert key.material == fetched.material and len(key.material) == bits // 8
                # both report the QBER of the key's own frame, not of whichever frame each finished last
                frame_qber = {s.frame_id: s.qber for s in alice.qber_history}
                assert key.frame_id == fetched.frame_id == frame_in_file(stores["bob"], key.key_id)
                assert alice.qber_of(key) == bob.qber_of(fetched) == frame_qber[key.frame_id] > 0
                got.append(key.key_id)
            # and the other way round: Bob allocates from his own partition
            key = await bob.request_key(256)
            assert (await alice.fetch_key(key.key_id)).material == key.material
            assert len(set(got)) == 3
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_resync_of_an_inventory_larger_than_one_record_converges(tmp_path):
    """20 000 keys are 340 kB of inventory, more than a 256 KiB record (which still holds the largest
    pipeline message of 2^15-detection frames): the inventory goes in several messages."""
    import os
    import time
    import uuid

    ids = [str(uuid.uuid4()) for _ in range(20_000)]

    def half_committed(stores):                  # both stored the frame, only Alice heard it was done
        keys = [(key_id, os.urandom(32)) for key_id in ids]
        for store in stores.values():
            store.put_pending(LINK, 1, keys, expires_at=time.time() + 3600)
        stores["alice"].commit_frame(LINK, 1)

    async def main():
        async with trio.open_nursery() as nursery:
            alice, bob, _, stores = await start_pair(nursery, tmp_path, before_start=half_committed,
                                                     detections=1 << 15, max_record_bytes=256 * 1024)
            await wait_for(lambda: alice._resynced.is_set() and bob._resynced.is_set(), 30)
            assert stores["bob"].counts(LINK)[KeyState.AVAILABLE] >= len(ids)
            assert all(stores["bob"].state(LINK, key_id) is KeyState.AVAILABLE for key_id in ids[::100])
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_intercept_resend_halts_and_recovery_resumes(tmp_path):
    async def main():
        async with trio.open_nursery() as nursery:
            alice, bob, source, stores = await start_pair(nursery, tmp_path)
            await wait_for(lambda: alice.totals["keys"] > 0)
            source.set_attack(Attack("intercept-resend", 1.0))
            await wait_for(lambda: alice.state == "halted" and bob.state == "halted")
            keys_during_attack = alice.totals["keys"]
            # A sample's qber is the frame's measured QBER, or its estimate where the frame ended before
            # error correction measured it.
            attacked = [s for s in alice.qber_history if s.qber > 0.15]
            assert attacked and all(s.secret_bits == 0 for s in attacked), list(alice.qber_history)[-5:]
            source.set_attack(Attack())
            await wait_for(lambda: alice.state in ("running", "degraded") and alice.totals["keys"] > keys_during_attack)
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_registered_channels_share_the_engines_peer_session(tmp_path):
    """A consumer (as WireGuard's epoch channel) gets a stream per session on the engine's own session:
    registered before the session on one end and after it is up on the other; records travel both ways."""
    from qkdd.link_channel import WIREGUARD_CHANNEL

    async def main():
        got = {"alice": [], "bob": []}

        def handler(role):
            async def serve(stream):
                async def hello_until_heard():       # records sent before the peer registered are lost
                    while not (got["alice"] and got["bob"]):
                        await stream.send(f"hello from {role}".encode())
                        await trio.sleep(0.2)
                async with trio.open_nursery() as inner:
                    inner.start_soon(hello_until_heard)
                    while True:
                        got[role].append((stream.session.link_id, await stream.receive()))
            return serve

        async with trio.open_nursery() as nursery:
            alice, bob, source, stores = await start_pair(nursery, tmp_path)
            alice.register_channel(WIREGUARD_CHANNEL, handler("alice"))
            await wait_for(lambda: bob.session is not None)
            bob.register_channel(WIREGUARD_CHANNEL, handler("bob"))
            await wait_for(lambda: got["alice"] and got["bob"], timeout_s=20)
            assert got["alice"][0] == (LINK, b"hello from bob")
            assert got["bob"][0] == (LINK, b"hello from alice")
            for channel in (1, WIREGUARD_CHANNEL):          # the engine's own channel, or twice
                try:
                    alice.register_channel(channel, handler("alice"))
                except ValueError:
                    pass
                else:
                    raise AssertionError(f"channel {channel} accepted")
            await wait_for(lambda: alice.totals["keys"] > 0)   # key generation goes on alongside
            nursery.cancel_scope.cancel()
    trio.run(main)

"""Two link engines in one process over real parts: TLS peer channel with ML-DSA-65 pinned keys, the sim
source and detector over a real TCP quantum channel, SQLite key stores in a temporary directory."""
import sqlite3

import trio

from qkdd.hal.sim import Attack, SimParams
from qkdd.hal.sim.driver import SimAliceDevice, SimBobDevice
from qkdd.hal.sim.settings import MAX_FRAME_SLOTS
from qkdd.keystore import KeyState, KeyStore
from qkdd.link.engine import BOB_BUFFER_FRAMES
from qkdd.peer import generate_identity
from tests.link_support import TEST_DETECTIONS, TEST_SOURCE, LinkEnd
from tests.peer_harness import fast_settings

LINK = "link-ab"


async def start_pair(nursery, tmp_path, *, distance_km=25.0, detections=TEST_DETECTIONS, before_start=None,
                     before_run=None, engine_options=None, via=None, **peer_settings):
    """Alice's and Bob's link ends, running; `before_run(role, end)` may register on each end's channel;
    `engine_options(role)` gives more LinkEngine arguments; `await via(alice_port)` may give the port Bob
    dials instead of Alice's (a proxy in between)."""
    options = engine_options or (lambda role: {})
    alice_id, bob_id = generate_identity(), generate_identity()
    source = SimAliceDevice(SimParams(distance_km=distance_km, **TEST_SOURCE), listen_port=0,
                            frame_slots=MAX_FRAME_SLOTS, max_detections=detections, realtime=False, seed=11)
    stores = {}
    for role in ("alice", "bob"):
        stores[role] = KeyStore(str(tmp_path / f"{role}.db"), bytes(32))
    if before_start is not None:
        before_start(stores)

    alice = LinkEnd(LINK, "alice", source, stores["alice"],
                    fast_settings(LINK, listen=("127.0.0.1", 0), **peer_settings), alice_id, bob_id.public_key(),
                    **options("alice"))
    if before_run is not None:
        before_run("alice", alice)
    await alice.start(nursery)              # the engine also starts the source's quantum-channel listener
    bob_port = alice.listen_port if via is None else await via(alice.listen_port)
    bob = LinkEnd(LINK, "bob", SimBobDevice(host="127.0.0.1", port=source.address[1]), stores["bob"],
                  fast_settings(LINK, dial=("127.0.0.1", bob_port), **peer_settings), bob_id,
                  alice_id.public_key(), **options("bob"))
    if before_run is not None:
        before_run("bob", bob)
    await bob.start(nursery)
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
                    peak["alice"] = max(peak["alice"], len(alice.engine._frames))
                    peak["bob"] = max(peak["bob"], bob.engine._bob_frames_out.statistics().current_buffer_used)
                    await trio.sleep(0.01)
            nursery.start_soon(watch_buffers)
            await wait_for(lambda: alice.status.totals["keys"] >= 100 and bob.status.totals["keys"] >= 100)
            await wait_for(lambda: alice.status.frames_done >= 2)
            assert 0 < peak["alice"] <= alice.engine._frames_capacity and peak["bob"] <= BOB_BUFFER_FRAMES
            assert alice.status.frames_unpaired <= 1        # device frames are paired, none stall and age out
            for end in (alice, bob):                 # each device reports what its engine measured
                status = await end.engine.device.channel_status()
                assert status.key_rate_bps > 0 and status.qber == end.status.qber_history[-1].qber
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
                key = await alice.keys.request_key(bits)
                fetched = await bob.keys.fetch_key(key.key_id)
                assert key.material == fetched.material and len(key.material) == bits // 8
                # both report the QBER of the key's own frame, not of whichever frame each finished last
                frame_qber = {s.frame_id: s.qber for s in alice.status.qber_history}
                assert key.frame_id == fetched.frame_id == frame_in_file(stores["bob"], key.key_id)
                assert alice.status.qber_of(key) == bob.status.qber_of(fetched) == frame_qber[key.frame_id] > 0
                got.append(key.key_id)
            # and the other way round: Bob allocates from his own partition
            key = await bob.keys.request_key(256)
            assert (await alice.keys.fetch_key(key.key_id)).material == key.material
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
            await wait_for(lambda: alice.channel.ready and bob.channel.ready, 30)
            assert stores["bob"].counts(LINK)[KeyState.AVAILABLE] >= len(ids)
            assert all(stores["bob"].state(LINK, key_id) is KeyState.AVAILABLE for key_id in ids[::100])
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_intercept_resend_halts_and_recovery_resumes(tmp_path):
    async def main():
        async with trio.open_nursery() as nursery:
            alice, bob, source, stores = await start_pair(nursery, tmp_path)
            await wait_for(lambda: alice.status.totals["keys"] > 0)
            source.set_attack(Attack("intercept-resend", 1.0))
            await wait_for(lambda: alice.status.state == "halted" and bob.status.state == "halted")
            keys_during_attack = alice.status.totals["keys"]
            # A sample's qber is the frame's measured QBER, or its estimate where the frame ended before
            # error correction measured it.
            attacked = [s for s in alice.status.qber_history if s.qber > 0.15]
            assert attacked and all(s.secret_bits == 0 for s in attacked), list(alice.status.qber_history)[-5:]
            source.set_attack(Attack())
            await wait_for(lambda: alice.status.state in ("running", "degraded")
                           and alice.status.totals["keys"] > keys_during_attack)
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_registered_channels_share_the_links_one_peer_session(tmp_path):
    """A consumer's channel kind gets a stream per session on the link's one session, beside the engine's
    frames: what one end sends before the other end's handler reads is queued for it, not lost."""
    from qkdd.link_channel import PIPELINE_CHANNEL
    consumer_channel = 0x7001

    async def main():
        got = {"alice": [], "bob": []}
        bob_may_read = trio.Event()

        def handler(role):
            async def serve(stream):
                await stream.send(f"hello from {role}".encode())
                if role == "bob":
                    await bob_may_read.wait()
                while True:
                    got[role].append((stream.session.link_id, await stream.receive()))
            return serve

        def register(role, end):
            end.channel.register(consumer_channel, handler(role))
            for channel in (PIPELINE_CHANNEL, consumer_channel):        # the engine's own, or twice
                try:
                    end.channel.register(channel, handler(role))
                except ValueError:
                    pass
                else:
                    raise AssertionError(f"channel {channel} accepted")

        async with trio.open_nursery() as nursery:
            alice, bob, source, stores = await start_pair(nursery, tmp_path, before_run=register)
            await wait_for(lambda: got["alice"], timeout_s=20)
            assert got["alice"][0] == (LINK, b"hello from bob")
            await trio.sleep(0.5)
            assert got["bob"] == []
            bob_may_read.set()
            await wait_for(lambda: got["bob"], timeout_s=5)
            assert got["bob"][0] == (LINK, b"hello from alice")
            await wait_for(lambda: alice.status.totals["keys"] > 0)   # key generation goes on alongside
            nursery.cancel_scope.cancel()
    trio.run(main)

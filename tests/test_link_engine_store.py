"""Two link engines over real parts (TLS peer channel, sim devices over TCP, SQLite key stores) when the key
store cannot take keys: a really full disk under Bob's store, and stores at their configured capacity.
The engines keep running, health says why generation paused, and generation resumes by itself. Also the
stall watch on a live link, and both ends storing the same expiry for every key."""
import os
import time

import trio

from qkdd.hal.sim import SimParams
from qkdd.hal.sim.driver import SimAliceDevice, SimBobDevice
from qkdd.hal.sim.settings import MAX_FRAME_SLOTS
from qkdd.health import Health
from qkdd.keystore import KeyState, KeyStore, KeyUnavailable, StoreCapacity
from qkdd.link.stall import watch_stall
from qkdd.link.store_guard import STORE_FAILED, STORE_FULL
from qkdd.peer import generate_identity
from tests.link_support import TEST_SOURCE, LinkEnd
from tests.peer_harness import fast_settings
from tests.store_support import fill_disk, small_tmpfs

LINK = "link-ab"


def serving_health() -> Health:
    health = Health()
    health.register_link(LINK)
    health.set_daemon_state("serving")
    return health


async def start_pair(nursery, stores: dict, healths: dict, detections: int = 1 << 16):
    """Alice's and Bob's link ends (channel, reservations, engine, /v1 key requests), running."""
    alice_id, bob_id = generate_identity(), generate_identity()
    source = SimAliceDevice(SimParams(distance_km=25.0, **TEST_SOURCE), listen_port=0, frame_slots=MAX_FRAME_SLOTS,
                            max_detections=detections, realtime=False, seed=13)
    alice = LinkEnd(LINK, "alice", source, stores["alice"], fast_settings(LINK, listen=("127.0.0.1", 0)), alice_id,
                    bob_id.public_key(), health=healths["alice"])
    await alice.start(nursery)
    bob = LinkEnd(LINK, "bob", SimBobDevice(host="127.0.0.1", port=source.address[1]), stores["bob"],
                  fast_settings(LINK, dial=("127.0.0.1", alice.listen_port)), bob_id, alice_id.public_key(),
                  health=healths["bob"])
    await bob.start(nursery)
    for end in (alice, bob):
        end.engine.store_guard.probe_interval_s = 0.5
    return alice, bob


async def wait_for(predicate, timeout_s=60.0):
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.05)


def agree(stores) -> bool:
    """Every key both ends hold has the same expiry at both (Alice's frame set it)."""
    alice, bob = stores["alice"], stores["bob"]
    held = [k for k, s in alice.inventory(LINK).items() if s is KeyState.AVAILABLE]
    return bool(held) and all(alice.peek(LINK, k).expires_at == bob.peek(LINK, k).expires_at for k in held[:40])


def test_a_full_disk_under_bobs_store_pauses_the_link_and_freed_space_resumes_it(tmp_path):
    with small_tmpfs(tmp_path, 24 << 20) as disk:
        stores = {"alice": KeyStore(str(tmp_path / "alice.db"), bytes(32)),
                  "bob": KeyStore(str(disk / "bob.db"), bytes(32))}
        healths = {"alice": serving_health(), "bob": serving_health()}

        async def main():
            async with trio.open_nursery() as nursery:
                alice, bob = await start_pair(nursery, stores, healths)
                await wait_for(lambda: bob.status.totals["keys"] >= 40)
                filler = fill_disk(disk, leave_bytes=64 << 10)
                await wait_for(lambda: bob.engine.store_guard.state == STORE_FAILED)
                assert bob.engine.store_guard.disk_full
                assert healths["bob"].link_state(LINK).state == "store_failed" and not healths["bob"].healthy()
                # paused: the frames in flight end (aborted; or, when the disk filled at Bob's commit, stored at
                # Alice, Bob's commit waiting for space), no new one starts and nothing more is stored; the
                # engines and their session are alive; what is stored is readable
                done = bob.status.frames_done
                await trio.sleep(4.0)
                assert bob.status.frames_done <= done + bob.engine.frames_in_flight
                stored = {role: len(store.inventory(LINK)) for role, store in stores.items()}
                await trio.sleep(2.0)
                assert {role: len(store.inventory(LINK)) for role, store in stores.items()} == stored
                assert alice.status.connected and bob.status.connected
                assert stores["bob"].counts(LINK)[KeyState.AVAILABLE] > 0
                # a reservation on the full disk: refused when Bob cannot record it, served when its write
                # fits in pages SQLite already holds (a reused WAL); either way both ends agree, no crash
                reserved = None
                try:
                    reserved = await alice.keys.request_key(256)
                except KeyUnavailable as refusal:
                    assert "refused the reservation: store_failure" in str(refusal)
                os.remove(filler)
                await wait_for(lambda: not bob.engine.store_guard.paused, 10)
                if reserved is not None:
                    assert (await bob.keys.fetch_key(reserved.key_id)).material == reserved.material
                assert healths["bob"].link_state(LINK).state in ("running", "degraded")
                keys_then = bob.status.totals["keys"]
                await wait_for(lambda: bob.status.totals["keys"] > keys_then + 20)
                key = await alice.keys.request_key(256)
                assert (await bob.keys.fetch_key(key.key_id)).material == key.material
                assert key.qber is not None and alice.status.qber_of(key) == bob.status.qber_of(key) == key.qber
                assert agree(stores)
                nursery.cancel_scope.cancel()

        trio.run(main)
        stores["bob"].close()


def test_stores_at_capacity_pause_generation_and_keys_handed_out_resume_it(tmp_path):
    capacity = StoreCapacity(max_key_bits=64 * 256)
    stores = {role: KeyStore(str(tmp_path / f"{role}.db"), bytes(32), capacity=capacity) for role in ("alice", "bob")}
    healths = {"alice": serving_health(), "bob": serving_health()}

    async def main():
        async with trio.open_nursery() as nursery:
            alice, bob = await start_pair(nursery, stores, healths)
            await wait_for(lambda: STORE_FULL in (alice.engine.store_guard.state, bob.engine.store_guard.state))
            await trio.sleep(1.0)
            held = stores["alice"].fill(LINK).key_bits
            assert held >= capacity.max_key_bits and held == stores["bob"].fill(LINK).key_bits
            await trio.sleep(3.0)
            assert stores["alice"].fill(LINK).key_bits == held                 # generation paused
            full = "alice" if alice.engine.store_guard.state == STORE_FULL else "bob"
            assert healths[full].link_state(LINK).state == "store_full" and healths[full].healthy()
            while stores["alice"].fill(LINK).ratio >= 0.9:                     # consumers draw keys at both ends
                key = await alice.keys.request_key(256)
                assert (await bob.keys.fetch_key(key.key_id)).material == key.material
            await wait_for(lambda: not alice.engine.store_guard.paused and not bob.engine.store_guard.paused, 10)
            await wait_for(lambda: stores["alice"].fill(LINK).key_bits >= capacity.max_key_bits)
            assert agree(stores)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_live_link_below_its_floor_is_reported_stalled(tmp_path):
    """Alice's floor is far above what the link yields, Bob's far below: only Alice's end stalls."""
    stores = {role: KeyStore(str(tmp_path / f"{role}.db"), bytes(32)) for role in ("alice", "bob")}
    healths = {"alice": serving_health(), "bob": serving_health()}

    async def main():
        async with trio.open_nursery() as nursery:
            alice, bob = await start_pair(nursery, stores, healths)
            started = time.monotonic()
            nursery.start_soon(watch_stall, alice.engine, healths["alice"], 1e12, 10.0)
            nursery.start_soon(watch_stall, bob.engine, healths["bob"], 1.0, 10.0)
            await wait_for(lambda: healths["alice"].link_state(LINK).state == "stalled", 30)
            assert time.monotonic() - started >= 10.0 and not healths["alice"].healthy()
            assert "below the floor" in healths["alice"].link_state(LINK).detail
            assert healths["bob"].link_state(LINK).state in ("running", "degraded") and healths["bob"].healthy()
            assert bob.status.totals["keys"] > 0
            nursery.cancel_scope.cancel()

    trio.run(main)

"""ETSI 004 TTL timers across a restart: both ends' real key stores (SQLite files) with their durable chunk
deadlines, the service objects (reservation services, chunks, servers) built again on the same files, the
wall clock moved on while "stopped", and trio's MockClock for the timers that run again after the restart."""
from __future__ import annotations

import uuid

import trio
import trio.testing

from qkdd.etsi004.chunks import final_holder
from qkdd.etsi004.deadlines import ChunkDeadlines
from qkdd.etsi004.streams import Defaults
from qkdd.etsi004.wire import GetKey, OpenConnect, Status
from qkdd.keystore import KeyState
from tests.etsi004_support import LINK_ID, make_pki, qos, reopen_stores, two_ends

START_WALL_S = 1_900_000_000.0
DEFAULT_TTL_S = 2000


def _states(store, ksid: str, index: int) -> set[KeyState]:
    return {state for _, state in store.stream_keys(LINK_ID, final_holder(ksid, index))}


async def _get(server, ksid: str, index: int) -> Status:
    response = await server.answer(GetKey(ksid, index, 1024), "me")
    return Status(int.from_bytes(response[8:12], "big"))


def test_004_ttl_survives_a_restart_expired_chunks_erased_at_start_up_running_timers_restored(tmp_path):
    short, long = str(uuid.uuid4()), str(uuid.uuid4())
    pki = make_pki(tmp_path)
    defaults = Defaults(ttl_s=DEFAULT_TTL_S)

    async def before_the_stop():
        async with two_ends(tmp_path, pki=pki, defaults=defaults, wall_clock=lambda: START_WALL_S) as ends:
            for end in ends.values():
                for ksid, ttl_s in ((short, 50), (long, 1000)):
                    await end.server.answer(OpenConnect("app://a", "app://b", qos(32, ttl_s=ttl_s), ksid), "me")
            # A assigns index 0 of both streams (B records them, never fetches); B assigns index 1 of the short
            # one (A records it, never fetches): each end holds unfetched chunks the other end handed out
            assert await _get(ends["a"].server, short, 0) is Status.SUCCESSFUL
            assert await _get(ends["a"].server, long, 0) is Status.SUCCESSFUL
            assert await _get(ends["b"].server, short, 1) is Status.SUCCESSFUL

    trio.run(before_the_stop)
    stores = reopen_stores(tmp_path)
    try:
        armed = {end: ChunkDeadlines(store.database).pending(LINK_ID) for end, store in stores.items()}
        assert armed["b"] == {(uuid.UUID(short).hex, 0): START_WALL_S + 50,
                              (uuid.UUID(long).hex, 0): START_WALL_S + 1000}
        assert armed["a"] == {(uuid.UUID(short).hex, 1): START_WALL_S + 50}
        # a chunk whose keys were reserved here just before the stop, without its deadline yet
        crashed = str(uuid.uuid4())
        stores["b"].reserve_available(LINK_ID, 1, final_holder(crashed, 0), bits=256)
    finally:
        for store in stores.values():
            store.close()

    clock = trio.testing.MockClock(rate=1.0)
    down_s = 100.0                             # the short TTL ran out while the daemons were down

    async def after_the_restart():
        async with two_ends(tmp_path, pki=pki, defaults=defaults, reopen=True,
                            wall_clock=lambda: START_WALL_S + down_s) as ends:
            a, b = ends["a"], ends["b"]
            # erased at start-up at both ends, before any application came back
            assert _states(b.store, short, 0) == {KeyState.DELIVERED}
            assert _states(a.store, short, 1) == {KeyState.DELIVERED}
            assert (a.server.metrics.expired_chunks, b.server.metrics.expired_chunks) == (1, 1)
            # the long chunk's timer runs again with what was left of it (1000 - 100 s); the crashed chunk got
            # the default TTL from the start-up
            assert _states(b.store, long, 0) == {KeyState.RESERVED}
            pending = ChunkDeadlines(b.store.database).pending(LINK_ID)
            assert pending == {(uuid.UUID(long).hex, 0): START_WALL_S + 1000,
                               (uuid.UUID(crashed).hex, 0): START_WALL_S + down_s + DEFAULT_TTL_S}
            clock.jump(1000 - down_s - 5)
            assert await b.server.sweep_ttl_once() == 0
            assert _states(b.store, long, 0) == {KeyState.RESERVED}
            clock.jump(10)
            assert await b.server.sweep_ttl_once() == 1
            assert _states(b.store, long, 0) == {KeyState.DELIVERED}
            clock.jump(DEFAULT_TTL_S)
            assert await b.server.sweep_ttl_once() == 1
            assert _states(b.store, crashed, 0) == {KeyState.DELIVERED}
            assert ChunkDeadlines(b.store.database).pending(LINK_ID) == {}
            # an application that opens the short stream again finds its erased chunk gone, not another one
            await b.server.answer(OpenConnect("app://a", "app://b", qos(32, ttl_s=50), short), "me")
            assert await _get(b.server, short, 0) is Status.INSUFFICIENT_KEY
            assert b.server.metrics.refusals["insufficient_key"] == 1

    trio.run(after_the_restart, clock=clock)


def test_004_a_fetched_chunk_leaves_no_deadline_behind(tmp_path):
    ksid = str(uuid.uuid4())

    async def main():
        async with two_ends(tmp_path) as ends:
            for end in ends.values():
                await end.server.answer(OpenConnect("app://a", "app://b", qos(32, ttl_s=60), ksid), "me")
            assert await _get(ends["a"].server, ksid, 0) is Status.SUCCESSFUL
            assert list(ChunkDeadlines(ends["b"].store.database).pending(LINK_ID)) == [(uuid.UUID(ksid).hex, 0)]
            assert await _get(ends["b"].server, ksid, 0) is Status.SUCCESSFUL
            assert ChunkDeadlines(ends["b"].store.database).pending(LINK_ID) == {}
            assert ends["b"].server.metrics.chunks == 1 and ends["b"].server.metrics.chunk_bytes == 32
    trio.run(main)


"""ETSI 004 QoS (GS QKD 004 V2.1.1 clause 6.1, table 2): the OPEN negotiation and the stream's pacing and TTL
as data, then max_bps pacing and TTL erasure through the real server and two real ends under trio's
MockClock (time moves when the test jumps it, so no assertion depends on the machine's speed)."""
from __future__ import annotations

import dataclasses
import uuid

import trio
import trio.testing

from qkdd.etsi004.chunks import final_holder
from qkdd.etsi004.streams import (DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES, Defaults, Stream, Streams, floor_bps,
                                  negotiate)
from qkdd.etsi004.wire import GetKey, OpenConnect, QoS, Status
from qkdd.keystore import KeyState
from tests.etsi004_support import LINK_ID, add_keys, qos, two_ends


def test_004_open_fills_zero_fields_with_defaults_and_counter_proposes_what_it_cannot_meet():
    status, granted = negotiate(QoS(0, 0, 0, 0, 0, 0, 0, "application/json"), 2000.0, Defaults(700, 60))
    assert status is Status.SUCCESSFUL
    assert (granted.key_chunk_size, granted.max_bps, granted.timeout_ms, granted.ttl_s) == (DEFAULT_CHUNK_BYTES,
                                                                                          2000, 700, 60)
    status, counter = negotiate(QoS(MAX_CHUNK_BYTES + 1, 0, 3000, 0, 0, 0, 0, "text/plain"), 2000.0)
    assert status is Status.QOS_NOT_MET
    assert (counter.key_chunk_size, counter.min_bps, counter.metadata_mimetype) == (MAX_CHUNK_BYTES, 2000,
                                                                                   "application/json")
    status, _ = negotiate(QoS(32, 0, 2000, 0, 0, 0, 0, ""), 2000.0)    # no metadata asked: fine
    assert status is Status.SUCCESSFUL


def test_004_pacing_spaces_chunks_by_chunk_bits_over_max_bps_and_ttl_expires_only_old_chunks():
    stream = Stream("k", LINK_ID, "me", QoS(100, 400, 0, 0, 0, 1000, 10))     # 800 bits at 400 bps: 2 s
    assert stream.delay_s(50.0) == 0
    stream.served(50.0)
    assert stream.delay_s(50.5) == 1.5
    stream.served(52.0)                                                     # on time: the next is due at 54
    assert stream.delay_s(52.0) == 2.0
    stream.assigned.update({1: 40.0, 2: 45.0, 3: 49.9})
    assert stream.expired(55.0) == [1, 2] and list(stream.assigned) == [3]
    streams = Streams()
    assert streams.open("k", LINK_ID, "me", stream.qos)[0] is Status.SUCCESSFUL
    assert streams.open("k", LINK_ID, "you", stream.qos)[0] is Status.KSID_IN_USE
    assert streams.close("k", "you") is None and streams.close("k", "me") is not None


def test_004_get_key_is_paced_to_max_bps(tmp_path):
    clock = trio.testing.MockClock(rate=1.0)

    async def main():
        async with two_ends(tmp_path) as ends:
            server, ksid = ends["a"].server, str(uuid.uuid4())
            opened = await server.answer(OpenConnect("app://a", "app://b", qos(32, max_bps=8, timeout_ms=100_000),
                                                     ksid), "me")
            assert opened.startswith(bytes([1, 0, 1, 3]))
            assert await _status(server, GetKey(ksid, 0, 1024)) is Status.SUCCESSFUL
            done = trio.Event()
            statuses = []

            async def second():
                statuses.append(await _status(server, GetKey(ksid, 1, 1024)))
                done.set()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(second)
                await trio.sleep(1.0)
                assert not done.is_set()            # 256 bits at 8 bps: due 32 s after the first
                clock.jump(32.0)
                with trio.fail_after(30):
                    await done.wait()
            assert statuses == [Status.SUCCESSFUL]
    trio.run(main, clock=clock)


def test_004_ttl_erases_chunks_the_peer_assigned_and_this_end_never_fetched(tmp_path):
    clock = trio.testing.MockClock(rate=1.0)

    async def main():
        async with two_ends(tmp_path) as ends:
            ksid = str(uuid.uuid4())
            for end in ends.values():
                await end.server.answer(OpenConnect("app://a", "app://b", qos(64, ttl_s=50), ksid), "me")
            assert await _status(ends["a"].server, GetKey(ksid, 0, 1024)) is Status.SUCCESSFUL
            assert await _status(ends["a"].server, GetKey(ksid, 1, 1024)) is Status.SUCCESSFUL
            await trio.sleep(0.5)
            assert await _status(ends["b"].server, GetKey(ksid, 1, 1024)) is Status.SUCCESSFUL
            clock.jump(60.0)
            await ends["b"].server.sweep_ttl_once()
            held = ends["b"].store.stream_keys(LINK_ID, final_holder(ksid, 0))
            assert len(held) == 2 and {state for _, state in held} == {KeyState.DELIVERED}   # erased, unread
            assert await _status(ends["b"].server, GetKey(ksid, 0, 1024)) is Status.INSUFFICIENT_KEY
    trio.run(main, clock=clock)


async def _status(server, request) -> Status:
    response = await server.answer(request, "me")
    return Status(int.from_bytes(response[8:12], "big"))


# -- jitter and priority (GS QKD 004 V2.1.1 clause 6.1, table 2; priority's handling is ours, consideration 4) --

def test_004_jitter_is_held_against_what_the_link_can_still_promise_and_priority_orders_the_promises():
    # max 2000 bps with jitter 500 promises 1500 bps: more than a 1000 bps link has; the counter proposal is
    # the smallest jitter the link meets (2000 - 1000)
    status, counter = negotiate(QoS(32, 2000, 0, 500, 0, 1000, 10), 1000.0)
    assert status is Status.QOS_NOT_MET and counter.jitter == 1000 and counter.max_bps == 2000
    assert negotiate(counter, 1000.0)[0] is Status.SUCCESSFUL
    # a jitter of 0 asks for this end's: the deviation down to min_bps (nothing promised beyond min_bps)
    status, granted = negotiate(QoS(32, 2000, 300, 0, 0, 1000, 10), 1000.0)
    assert status is Status.SUCCESSFUL and granted.jitter == 1700 and floor_bps(granted) == 300
    streams = Streams()
    streams.open("high", LINK_ID, "me", QoS(32, 800, 600, 200, 5, 1000, 10))        # promises 600 bps
    low = negotiate(QoS(32, 800, 100, 0, 0, 1000, 10), 1000.0)[1]                   # jitter 0: promises 100 bps
    streams.open("low", LINK_ID, "me", low)
    assert streams.committed_bps(0) == 700 and streams.committed_bps(5) == 600 and streams.committed_bps(6) == 0
    # a new low-priority stream asking 500 bps meets the high stream's promise; a priority-9 one does not
    assert negotiate(QoS(32, 0, 500, 0, 0, 0, 0), 1000.0, committed_bps=streams.committed_bps(0))[0] \
        is Status.QOS_NOT_MET
    assert negotiate(QoS(32, 0, 500, 0, 9, 0, 0), 1000.0, committed_bps=streams.committed_bps(9))[0] \
        is Status.SUCCESSFUL


def test_004_pacing_within_jitter_lets_a_chunk_out_early_by_the_jitters_slack_and_keeps_the_mean_rate():
    # 256-bit chunks at 8 bps: nominal interval 32 s; jitter 8 bps: no interval shorter than 256 / 16 = 16 s,
    # and a stream that takes every chunk as soon as it may gets them at 0, 16, 48, 80, ... (mean 8 bps)
    stream = Stream("k", LINK_ID, "me", QoS(32, 8, 0, 8, 0, 1000, 10))
    out, now = [], 0.0
    for _ in range(6):
        now += stream.delay_s(now)
        out.append(now)
        stream.served(now)
    assert out == [0.0, 16.0, 48.0, 80.0, 112.0, 144.0]
    assert min(b - a for a, b in zip(out, out[1:])) >= 256 / (8 + 8)
    # without jitter, no chunk early; the deadline (the floor max_bps - jitter) ranks streams of one priority
    strict = Stream("s", LINK_ID, "me", QoS(32, 8, 0, 0, 0, 1000, 10))
    strict.served(0.0)
    assert strict.delay_s(0.0) == 32.0 and strict.deadline() == 32.0
    loose = Stream("l", LINK_ID, "me", QoS(32, 8, 0, 4, 0, 1000, 10))                # floor 4 bps: 64 s late
    loose.served(0.0)
    assert loose.deadline() == 64.0 and strict.rank() < loose.rank()
    urgent = Stream("u", LINK_ID, "me", QoS(32, 8, 0, 4, 3, 1000, 10))
    urgent.served(0.0)
    assert urgent.rank() < strict.rank()                                            # priority first


def test_004_get_key_is_paced_within_its_jitter_through_the_server(tmp_path):
    clock = trio.testing.MockClock(rate=1.0)

    async def main():
        async with two_ends(tmp_path) as ends:
            server, ksid = ends["a"].server, str(uuid.uuid4())
            asked = qos(32, max_bps=8, timeout_ms=1_000_000)
            opened = await server.answer(OpenConnect("app://a", "app://b", QoS(*dataclasses.astuple(asked)[:3], 8,
                                                     *dataclasses.astuple(asked)[4:]), ksid), "me")
            assert opened.startswith(bytes([1, 0, 1, 3])) and Status(int.from_bytes(opened[8:12], "big")) == 0
            assert await _status(server, GetKey(ksid, 0, 1024)) is Status.SUCCESSFUL
            for index, early_s, due_s in ((1, 15.0, 16.0), (2, 31.0, 32.0)):   # 16 s after the first, then 32
                done = trio.Event()

                async def fetch():
                    assert await _status(server, GetKey(ksid, index, 1024)) is Status.SUCCESSFUL
                    done.set()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(fetch)
                    await trio.sleep(0.2)
                    clock.jump(early_s - 0.2)
                    await trio.sleep(0.2)
                    assert not done.is_set(), index
                    clock.jump(due_s - early_s)
                    with trio.fail_after(30):
                        await done.wait()
    trio.run(main, clock=clock)


def test_004_when_the_stock_cannot_serve_both_the_higher_priority_stream_is_served_first(tmp_path):
    clock = trio.testing.MockClock(rate=1.0)

    async def main():
        async with two_ends(tmp_path, keys=2) as ends:        # A holds one key of its own share
            server, low, high = ends["a"].server, str(uuid.uuid4()), str(uuid.uuid4())
            for ksid, priority in ((low, 0), (high, 7)):
                asked = dataclasses.replace(qos(32, timeout_ms=1_000_000), priority=priority)
                opened = await server.answer(OpenConnect("app://a", "app://b", asked, ksid), "me")
                assert Status(int.from_bytes(opened[8:12], "big")) is Status.SUCCESSFUL
            assert await _status(server, GetKey(low, 0, 1024)) is Status.SUCCESSFUL     # A's one key
            order = []

            async def fetch(ksid, index, name):
                assert await _status(server, GetKey(ksid, index, 1024)) is Status.SUCCESSFUL
                order.append(name)

            async def waiting(count):
                while len(ends["a"].chunks._waiting) < count:
                    await trio.sleep(0.01)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch, low, 1, "low")            # asks first, and waits for key
                with trio.fail_after(30):
                    await waiting(1)
                nursery.start_soon(fetch, high, 0, "high")
                with trio.fail_after(30):
                    await waiting(2)
                add_keys({name: end.store for name, end in ends.items()}, 1)     # one key: the high stream's
                with trio.fail_after(30):
                    while not order:
                        await trio.sleep(0.01)
                await trio.sleep(0.5)                                # the low stream keeps waiting
                assert order == ["high"]
                add_keys({name: end.store for name, end in ends.items()}, 1)
            assert order == ["high", "low"]
            assert ends["a"].server.metrics.chunks == 3
    trio.run(main, clock=clock)

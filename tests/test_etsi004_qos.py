"""ETSI 004 QoS (GS QKD 004 V2.1.1 clause 6.1, table 2): the OPEN negotiation and the stream's pacing and TTL
as data, then max_bps pacing and TTL erasure through the real server and two real ends under trio's
MockClock (time moves when the test jumps it, so no assertion depends on the machine's speed)."""
from __future__ import annotations

import uuid

import trio
import trio.testing

from qkdd.etsi004.chunks import final_holder
from qkdd.etsi004.streams import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES, Defaults, Stream, Streams, negotiate
from qkdd.etsi004.wire import GetKey, OpenConnect, QoS, Status
from qkdd.keystore import KeyState
from tests.etsi004_support import LINK_ID, qos, two_ends


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

"""Per-purpose streams over a real TLS session: each channel in order, unregistered ones dropped and
logged, every stream ends when the session does."""
from __future__ import annotations

import logging

import pytest
import trio

from qkdd.peer import PeerConnector, SessionClosedError, generate_identity
from qkdd.peer.mux import ChannelMux

from peer_harness import fast_settings

ALICE, BOB = generate_identity(), generate_identity()
SIFTING, CASCADE, KEYSTORE_SYNC = 1, 2, 7


def test_channels_are_demultiplexed_in_order_and_end_with_the_session(caplog):
    caplog.set_level(logging.INFO, logger="qkdd.peer")

    async def main():
        results = {}
        ready = trio.Event()

        async def bob_session(session):
            mux = ChannelMux(session, [SIFTING, CASCADE, KEYSTORE_SYNC], queue_records=4)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(mux.run)

                async def collect(channel):
                    stream, got = mux.stream(channel), []
                    try:
                        while True:
                            got.append(await stream.receive())
                            if channel == CASCADE:
                                await stream.send(b"parity for " + got[-1])
                    except SessionClosedError:
                        results[channel] = got

                for channel in (SIFTING, CASCADE, KEYSTORE_SYNC):
                    nursery.start_soon(collect, channel)
            results["dropped"] = mux.dropped_records
            ready.set()

        async def alice_session(session):
            mux = ChannelMux(session, [CASCADE])
            async with trio.open_nursery() as nursery:
                nursery.start_soon(mux.run)
                for i in range(20):  # interleaved purposes, more than a queue holds
                    await session.send(SIFTING, b"sift %d" % i)
                    await session.send(CASCADE, b"block %d" % i)
                    if i % 5 == 0:
                        await session.send(KEYSTORE_SYNC, b"sync %d" % i)
                await session.send(99, b"a purpose bob does not know")
                replies = mux.stream(CASCADE)
                results["replies"] = [await replies.receive() for _ in range(20)]
                nursery.cancel_scope.cancel()
            await session.aclose()

        async with trio.open_nursery() as nursery:
            bob = PeerConnector(fast_settings(listen=("127.0.0.1", 0)), BOB, ALICE.public_key(), bob_session)
            port = await nursery.start(bob.run)
            alice = PeerConnector(fast_settings(dial=("127.0.0.1", port)), ALICE, BOB.public_key(), alice_session)
            await nursery.start(alice.run)
            with trio.fail_after(10):
                await ready.wait()
            nursery.cancel_scope.cancel()
        return results

    results = trio.run(main)
    assert results[SIFTING] == [b"sift %d" % i for i in range(20)]
    assert results[CASCADE] == [b"block %d" % i for i in range(20)]
    assert results[KEYSTORE_SYNC] == [b"sync %d" % i for i in range(0, 20, 5)]
    assert results["replies"] == [b"parity for block %d" % i for i in range(20)]
    assert results["dropped"] == 1
    assert "dropped a 27-byte record on unregistered channel 99" in caplog.text


def test_mux_refuses_bad_registrations():
    with pytest.raises(ValueError, match="registered twice"):
        ChannelMux(None, [1, 1])
    with pytest.raises(ValueError, match="out of range"):
        ChannelMux(None, [70000])
    with pytest.raises(KeyError, match="not registered"):
        ChannelMux(None, [1]).stream(2)

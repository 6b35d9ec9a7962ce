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


async def run_pair(bob_session, alice_session, finished) -> None:
    """Bob listening and Alice dialling over real TLS, each with its session handler, until
    `await finished()` returns (10 s at most)."""
    async with trio.open_nursery() as nursery:
        bob = PeerConnector(fast_settings(listen=("127.0.0.1", 0)), BOB, ALICE.public_key(), bob_session)
        port = await nursery.start(bob.run)
        alice = PeerConnector(fast_settings(dial=("127.0.0.1", port)), ALICE, BOB.public_key(), alice_session)
        await nursery.start(alice.run)
        with trio.fail_after(10):
            await finished()
        nursery.cancel_scope.cancel()


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

        await run_pair(bob_session, alice_session, ready.wait)
        return results

    results = trio.run(main)
    assert results[SIFTING] == [b"sift %d" % i for i in range(20)]
    assert results[CASCADE] == [b"block %d" % i for i in range(20)]
    assert results[KEYSTORE_SYNC] == [b"sync %d" % i for i in range(0, 20, 5)]
    assert results["replies"] == [b"parity for block %d" % i for i in range(20)]
    assert results["dropped"] == 1
    assert "dropped a 27-byte record on channel 99 (no reader registered)" in caplog.text


def test_mux_refuses_bad_registrations():
    with pytest.raises(ValueError, match="registered twice"):
        ChannelMux(None, [1, 1])
    with pytest.raises(ValueError, match="out of range"):
        ChannelMux(None, [70000])
    with pytest.raises(KeyError, match="not registered"):
        ChannelMux(None, [1], queue_bytes=1 << 20).stream(2)     # no session needed to refuse a channel


RECORD_BYTES = 1 << 20
RECORDS = 40                    # 40 MiB: without a byte cap all of it fits the 64-record queues
QUEUE_BYTES = 4 * RECORD_BYTES


@pytest.mark.parametrize("through_mux", [False, True], ids=["session queue", "mux queues"])
def test_receive_queues_are_bounded_by_bytes_with_backpressure_not_drops(through_mux):
    """A reader that does not read makes the sender wait once about QUEUE_BYTES are queued (plus what
    TCP and TLS buffer); when it reads again every record arrives, in order."""

    async def main():
        state = {"sent": 0}
        bob_ready, reading, done = trio.Event(), trio.Event(), trio.Event()

        async def bob_session(session):
            mux = ChannelMux(session, [CASCADE]) if through_mux else None
            state["queued"] = (lambda: mux.queued_bytes) if through_mux else (lambda: session.queued_bytes)
            async with trio.open_nursery() as nursery:
                if mux is not None:
                    nursery.start_soon(mux.run)
                bob_ready.set()
                await reading.wait()
                receive = mux.stream(CASCADE).receive if mux is not None else session.receive
                got = [await receive() for _ in range(RECORDS)]
                state["got"] = [payload if through_mux else payload[1] for payload in got]
                done.set()
                nursery.cancel_scope.cancel()

        async def alice_session(session):
            for i in range(RECORDS):
                await session.send(CASCADE, i.to_bytes(4, "big") * (RECORD_BYTES // 4))
                state["sent"] = i + 1
            await trio.sleep_forever()

        settings = dict(receive_queue_bytes=QUEUE_BYTES, idle_timeout_s=30.0)
        async with trio.open_nursery() as nursery:
            bob = PeerConnector(fast_settings(listen=("127.0.0.1", 0), **settings), BOB, ALICE.public_key(),
                                bob_session)
            port = await nursery.start(bob.run)
            alice = PeerConnector(fast_settings(dial=("127.0.0.1", port), **settings), ALICE, BOB.public_key(),
                                  alice_session)
            await nursery.start(alice.run)
            with trio.fail_after(10):
                await bob_ready.wait()
                while True:                                  # until the sender is stuck
                    before = state["sent"]
                    await trio.sleep(0.5)
                    if state["sent"] == before:
                        break
            stuck_at, queued = state["sent"], state["queued"]()
            reading.set()
            with trio.fail_after(10):
                await done.wait()
            nursery.cancel_scope.cancel()
        return stuck_at, queued, state

    stuck_at, queued, state = trio.run(main)
    assert queued <= QUEUE_BYTES
    assert stuck_at < RECORDS // 2                           # the sender waited: backpressure
    assert state["sent"] == RECORDS                          # nothing was dropped...
    assert state["got"] == [i.to_bytes(4, "big") * (RECORD_BYTES // 4) for i in range(RECORDS)]  # ...in order


ROUTED, QUEUED = 0x0E14, 3


def test_an_attached_mux_gets_every_record_from_the_first_one_with_no_session_queue():
    """The dialer sends the moment its session is up; the listener attaches its mux in its handler's
    first step (as LinkChannel does), so the reader dispatches every record straight into the channel
    queues, in order per channel, with a reader that takes its time; the session's own queue stays
    unused."""

    async def main():
        got = {ROUTED: [], QUEUED: []}
        done = trio.Event()

        async def bob_session(session):
            mux = ChannelMux(session, [ROUTED, QUEUED])
            mux.attach()

            async def read(channel):
                stream = mux.stream(channel)
                try:
                    while True:
                        got[channel].append(await stream.receive())
                        await trio.sleep(0.001 if len(got[channel]) % 10 == 0 else 0)
                        assert session.queued_bytes == 0
                except SessionClosedError:
                    pass
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read, ROUTED)
                nursery.start_soon(read, QUEUED)
                await session.ended.wait()
                mux.end()
            done.set()

        async def alice_session(session):
            for i in range(50):
                await session.send(ROUTED, b"reserve %d" % i)
                if i % 10 == 0:
                    await session.send(QUEUED, b"other %d" % i)
            await session.aclose()

        await run_pair(bob_session, alice_session, done.wait)
        return got

    got = trio.run(main)
    assert got[ROUTED] == [b"reserve %d" % i for i in range(50)]
    assert got[QUEUED] == [b"other %d" % i for i in range(0, 50, 10)]


def test_a_session_cannot_be_routed_once_it_reads():
    async def main():
        outcome = {}

        async def bob_session(session):
            await trio.sleep(0.2)                   # the reader has started by now
            try:
                session.route_all(None)
            except RuntimeError as exc:
                outcome["error"] = str(exc)
            outcome["done"] = True

        async def alice_session(session):
            await trio.sleep_forever()

        async def finished():
            while "done" not in outcome:
                await trio.sleep(0.05)

        await run_pair(bob_session, alice_session, finished)
        return outcome

    assert "routed after it began reading" in trio.run(main)["error"]


def test_serve_inline_takes_what_is_queued_first_then_every_record_from_the_reader_in_order(caplog):
    """A channel switched to inline handling after records queued for it: those come first, in order,
    then the reader hands each new record straight to the handler (no queue); a handler that fails on one
    record loses that record only; the end of the session ends serve_inline with SessionClosedError."""

    async def main():
        got, outcome = [], {}
        done = trio.Event()

        async def bob_session(session):
            mux = ChannelMux(session, [ROUTED])
            mux.attach()
            stream = mux.stream(ROUTED)

            async def on_payload(payload):
                if payload == b"poison":
                    raise RuntimeError("a handler bug")
                got.append(payload)
                assert mux.queued_bytes == 0 or len(got) <= 10     # past the queued ones, nothing queues

            async def watch_end():
                await session.ended.wait()
                mux.end()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_end)
                while mux.queued_bytes < 10 * len(b"record 0"):      # the first ten wait in the queue
                    await trio.sleep(0.01)
                try:
                    await stream.serve_inline(on_payload)
                except SessionClosedError:
                    outcome["ended"] = True
            done.set()

        async def alice_session(session):
            for i in range(10):
                await session.send(ROUTED, b"record %d" % i)
            await trio.sleep(0.3)
            await session.send(ROUTED, b"poison")
            for i in range(10, 40):
                await session.send(ROUTED, b"record %d" % i)
            await trio.sleep(0.3)
            await session.aclose()

        await run_pair(bob_session, alice_session, done.wait)
        return got, outcome

    got, outcome = trio.run(main)
    assert got == [b"record %d" % i for i in range(40)]
    assert outcome == {"ended": True}
    assert "a record's handler failed" in caplog.text

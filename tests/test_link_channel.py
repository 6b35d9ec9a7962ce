"""The one owner of a link's session (qkdd.link_channel.LinkChannel) without sockets, on trio's MockClock:
real authenticated PeerSessions over in-memory streams, the channel serving its end as its connector
does, the other end a bare session driven by the test. Timings (preparation, heartbeats, the idle
timeout) are checked to the mock instant."""
from __future__ import annotations

import logging

import pytest
import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from qkdd.link_channel import LinkChannel
from qkdd.peer import PeerError, PeerSettings, PeerTimeoutError, SessionClosedError, generate_identity
from tests.link_support import run_session, serve_session
from tests.peer_harness import memory_session_pair

LINK = "link-ab"
PREPARE, FIRST, SECOND = 2, 0x7001, 0x7002
OURS, THEIRS = generate_identity(), generate_identity()
# The daemon's own timings (5 s heartbeat, 20 s idle timeout): on a mock clock they cost no wall time.
OUR_SETTINGS = PeerSettings(LINK, dial=("127.0.0.1", 1))
THEIR_SETTINGS = PeerSettings(LINK, listen=("127.0.0.1", 0))


def run(main):
    """`main()` on a mock clock that jumps to the next deadline whenever every task waits."""
    return trio.run(main, clock=MockClock(autojump_threshold=0))


def link_channel() -> LinkChannel:
    return LinkChannel(LINK, OUR_SETTINGS, OURS, THEIRS.public_key())


async def sessions(our_settings: PeerSettings = OUR_SETTINGS, their_settings: PeerSettings = THEIR_SETTINGS):
    """(our session, the peer's, our stream, the peer's stream): one authenticated session in memory."""
    ours, theirs, (our_stream, their_stream) = await memory_session_pair(our_settings, their_settings, OURS, THEIRS)
    return ours, theirs, our_stream, their_stream


def reader(name: str, log: list, got: dict, *, gate: trio.Event | None = None):
    """A handler noting when it starts, every payload (after `gate`, if any, once the first is in), and
    how it ends."""
    async def handler(stream) -> None:
        log.append((name, "start", trio.current_time()))
        got[name] = []
        try:
            while True:
                got[name].append(await stream.receive())
                if gate is not None:
                    await gate.wait()
        except SessionClosedError:
            log.append((name, "session closed", trio.current_time()))
            raise
    return handler


def test_the_preparer_runs_first_and_records_for_a_handler_meanwhile_wait_in_its_queue():
    channel = link_channel()
    log, got = [], {}
    seen_while_preparing = {}

    async def preparer(stream) -> None:
        log.append(("prepare", "start", trio.current_time()))
        assert await stream.receive() == b"inventory"
        await trio.sleep(5.0)                    # e.g. a large key store: handlers must not start meanwhile
        seen_while_preparing.update(ready=channel.ready, queued=channel.queued_bytes)
        log.append(("prepare", "done", trio.current_time()))

    channel.prepare_with(PREPARE, preparer)
    channel.register(FIRST, reader("first", log, got))
    channel.register(SECOND, reader("second", log, got))
    for kind in (PREPARE, FIRST):
        with pytest.raises(ValueError, match="registered twice"):
            channel.register(kind, reader("again", log, got))
    with pytest.raises(ValueError, match="preparer is registered"):
        channel.prepare_with(3, preparer)

    async def main():
        ended = []
        async with trio.open_nursery() as nursery:
            ours, theirs, _, _ = await sessions()
            nursery.start_soon(run_session, theirs)
            nursery.start_soon(serve_session, channel, ours, ended)
            assert not channel.ready
            for i in range(3):
                await theirs.send(FIRST, b"early %d" % i)       # before the first handler can run
            await theirs.send(PREPARE, b"inventory")
            with trio.fail_after(60):
                ready_session = await channel.wait_ready()
            ready_at = trio.current_time()
            assert ready_session is ours and channel.ready
            await wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        return ready_at

    ready_at = run(main)
    assert ready_at == 5.0
    assert log[:2] == [("prepare", "start", 0.0), ("prepare", "done", 5.0)]
    assert sorted(log[2:]) == [("first", "start", 5.0), ("second", "start", 5.0)]
    assert seen_while_preparing == {"ready": False, "queued": 3 * len(b"early 0")}
    assert got == {"first": [b"early 0", b"early 1", b"early 2"], "second": []}


def test_a_handler_raising_a_peer_error_ends_the_session(caplog):
    channel = link_channel()
    log, got = [], {}

    async def strict(stream) -> None:
        payload = await stream.receive()
        raise PeerError(f"the peer sent {payload!r} where a hello belongs")

    channel.register(FIRST, strict)
    channel.register(SECOND, reader("second", log, got))

    async def main():
        ended = []
        async with trio.open_nursery() as nursery:
            ours, theirs, _, _ = await sessions()
            nursery.start_soon(run_session, theirs)
            nursery.start_soon(serve_session, channel, ours, ended)
            await channel.wait_ready()
            await trio.sleep(1.0)
            await theirs.send(FIRST, b"nonsense")
            with pytest.raises(SessionClosedError), trio.fail_after(60):    # this end closed it: the peer hears it
                while True:
                    await theirs.receive()
            closed_at = trio.current_time()
            await wait_all_tasks_blocked()
        return closed_at, ended

    caplog.set_level(logging.INFO, logger="qkdd.link")
    closed_at, ended = run(main)
    assert closed_at == 1.0 and ended == [(1.0, None)]          # at once, with a clean close
    assert not channel.ready and channel.session is None
    assert f"channel {FIRST} ends the session" in caplog.text and "where a hello belongs" in caplog.text


def test_a_handler_failing_otherwise_stops_only_itself(caplog):
    channel = link_channel()
    log, got = [], {}

    async def buggy(stream) -> None:
        await stream.receive()
        raise RuntimeError("a consumer's bug")

    channel.register(FIRST, buggy)
    channel.register(SECOND, reader("second", log, got))

    async def main():
        ended = []
        async with trio.open_nursery() as nursery:
            ours, theirs, _, _ = await sessions()
            nursery.start_soon(run_session, theirs)
            nursery.start_soon(serve_session, channel, ours, ended)
            await channel.wait_ready()
            await theirs.send(FIRST, b"trigger")
            for second in range(1, 4):
                await trio.sleep(60.0)
                await theirs.send(FIRST, b"to nobody %d" % second)     # its reader is gone: dropped
                await theirs.send(SECOND, b"still served %d" % second)
            await wait_all_tasks_blocked()
            state = channel.ready, channel.queued_bytes, channel.mux.dropped_records
            nursery.cancel_scope.cancel()
        return state, ended

    caplog.set_level(logging.INFO)
    (ready, queued, dropped), ended = run(main)
    assert ready and ended == []                  # the session lived on for three minutes
    assert got["second"] == [b"still served %d" % i for i in range(1, 4)]
    assert queued == 0 and dropped == 3
    assert f"channel {FIRST} handler failed; the other channels go on" in caplog.text
    assert "a consumer's bug" in caplog.text


def test_when_the_session_ends_every_handler_gets_session_closed_and_no_queued_bytes_remain():
    """The peer closes: each handler first gets what was sent before the close (one handler is still
    busy with its first record while three more wait in its queue), then SessionClosedError; nothing
    stays counted against the byte budget."""
    channel = link_channel()
    log, got = [], {}
    busy = trio.Event()
    channel.register(FIRST, reader("first", log, got, gate=busy))
    channel.register(SECOND, reader("second", log, got))

    async def main():
        ended = []
        async with trio.open_nursery() as nursery:
            ours, theirs, _, _ = await sessions()
            nursery.start_soon(run_session, theirs)
            nursery.start_soon(serve_session, channel, ours, ended)
            await channel.wait_ready()
            mux = channel.mux
            await theirs.send_many([(FIRST, bytes([i]) * 100) for i in range(4)] + [(SECOND, b"last")])
            await trio.sleep(2.0)
            queued_before = mux.queued_bytes
            await theirs.aclose()
            await trio.sleep(1.0)
            busy.set()                               # the busy handler takes the rest, then hears of the end
            await wait_all_tasks_blocked()
        return queued_before, mux.queued_bytes, ended

    queued_before, queued_after, ended = run(main)
    assert queued_before == 300
    assert queued_after == 0 and channel.queued_bytes == 0 and not channel.ready
    assert got == {"first": [bytes([i]) * 100 for i in range(4)], "second": [b"last"]}
    assert sorted(entry for entry in log if entry[1] == "session closed") == [
        ("first", "session closed", 3.0), ("second", "session closed", 2.0)]
    assert ended == [(2.0, None)]


def test_wait_ready_follows_sessions_as_they_come_and_go():
    channel = link_channel()
    channel.register(FIRST, reader("first", [], {}))

    async def main():
        seen = []

        async def waiter():
            while True:
                session = await channel.wait_ready()
                seen.append((trio.current_time(), session))
                while channel.session is session:
                    await trio.sleep(1.0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(10.0)
            assert seen == [] and not channel.ready
            opened = []
            for start in (10.0, 30.0):
                await trio.sleep_until(start)
                ended = []
                async with trio.open_nursery() as session_nursery:
                    ours, theirs, _, _ = await sessions()
                    opened.append(ours)
                    session_nursery.start_soon(run_session, theirs)
                    session_nursery.start_soon(serve_session, channel, ours, ended)
                    await trio.sleep(5.0)
                    await theirs.aclose()
                assert not channel.ready
            nursery.cancel_scope.cancel()
        return seen, opened

    seen, opened = run(main)
    assert seen == [(10.0, opened[0]), (30.0, opened[1])]


def test_heartbeats_keep_a_quiet_session_up_and_a_silent_peer_is_dropped_at_the_idle_timeout():
    """With no application traffic each end sends a record every heartbeat_interval_s, so an hour of
    quiet ends nothing. When the peer falls silent (its process hangs, the connection stays open), this
    end tears the session down idle_timeout_s after the last record it heard, to the mock instant, and
    every handler hears of it."""
    channel = link_channel()
    log, got = [], {}
    channel.register(FIRST, reader("first", log, got))
    heartbeat_s, idle_s = OUR_SETTINGS.heartbeat_interval_s, OUR_SETTINGS.idle_timeout_s

    async def main():
        ended, peer_ended = [], []
        async with trio.open_nursery() as nursery:
            ours, theirs, our_stream, their_stream = await sessions()
            nursery.start_soon(run_session, theirs, peer_ended)
            nursery.start_soon(serve_session, channel, ours, ended)
            await channel.wait_ready()
            await trio.sleep(3600.0)
            assert channel.ready and ended == []
            quiet_pings = [t for t in our_stream.sent_at if 0 < t < 3600.0]
            their_stream.silent = True
            silent_from = trio.current_time()
            last_heard = their_stream.sent_at[-1]
            with trio.fail_after(2 * idle_s):
                while channel.ready:
                    await trio.sleep(0.5)
            await wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        return ended, peer_ended, quiet_pings, silent_from, last_heard

    ended, peer_ended, quiet_pings, silent_from, last_heard = run(main)
    gaps = {round(later - earlier, 9) for earlier, later in zip(quiet_pings, quiet_pings[1:])}
    assert gaps == {heartbeat_s} and len(quiet_pings) == int(3600.0 / heartbeat_s) - 1
    assert silent_from - heartbeat_s <= last_heard <= silent_from
    [(torn_down_at, error)] = ended
    assert isinstance(error, PeerTimeoutError)
    assert torn_down_at == pytest.approx(last_heard + idle_s, abs=1e-9)
    assert log[-1] == ("first", "session closed", torn_down_at)
    # a torn-down session sends no CLOSE: the peer (still listening) sees the connection end without one
    assert [(at, type(error).__name__) for at, error in peer_ended] == [(torn_down_at, "SessionTruncatedError")]


def test_a_preparer_that_fails_otherwise_than_a_peer_error_ends_only_that_session(caplog):
    """The resync's key store failing (here a sqlite3 error) is logged and ends the session cleanly; the
    channel's session handler returns instead of raising into the connector (which then serves the next
    session as usual), and no handler starts."""
    import sqlite3

    channel = link_channel()
    log, got = [], {}

    async def failing_preparer(stream):
        raise sqlite3.OperationalError("disk I/O error")

    channel.prepare_with(FIRST, failing_preparer)
    channel.register(SECOND, reader("second", log, got))

    async def main():
        ended = []
        async with trio.open_nursery() as nursery:
            ours, theirs, _, _ = await sessions()
            nursery.start_soon(run_session, theirs)
            await serve_session(channel, ours, ended)          # returns: nothing escapes into the connector
            with pytest.raises(SessionClosedError), trio.fail_after(60):
                while True:
                    await theirs.receive()
            nursery.cancel_scope.cancel()
        return ended

    caplog.set_level(logging.ERROR, logger="qkdd.link")
    ended = run(main)
    assert ended == [(0.0, None)] and log == [] and not channel.ready
    assert "could not be prepared; ending it" in caplog.text and "disk I/O error" in caplog.text

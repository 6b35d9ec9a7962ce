"""Flow control between a link's one multiplexer and its readers (the engine's frame inboxes, registered
channel kinds, the reservation service), against an authenticated peer that sends what it likes: a real
link end (sim source, SQLite store, its LinkChannel with ML-DSA-65 pinned keys) and, at the other end, a
bare PeerSession that answers the key-store resync and then floods. The session runs over in-memory
streams (the real handshake and records, no sockets); the tests of waiting run on trio's MockClock, with
the engine's own timings. (Real TLS between two link ends: test_link_engine.py.)"""
import uuid

import pytest
import trio
import trio.testing
from trio.testing import MockClock

import qkdd.link.engine as engine_module
from qkdd.hal.sim import SimParams
from qkdd.hal.sim.driver import SimAliceDevice
from qkdd.keystore import KeyStore
from qkdd.keystore.resync import (HelloAssembler, InventoryAssembler, ResyncPoint, SummaryAssembler, encode_hello,
                                  encode_inventory, encode_summaries)
from qkdd.link import envelope, linkmsg
from qkdd.link_channel import INVENTORY_CHANNEL, PIPELINE_CHANNEL, RESERVATION_CHANNEL
from qkdd.peer import PeerSettings, generate_identity
from qkdd.peer.mux import QUEUE_RECORDS
from qkdd.reservation.protocol import (KeyReservation, RefuseReason, ReservationEndpoint, ReservationRefused,
                                       pack_payloads)
from tests.link_support import TEST_SOURCE, LinkEnd, run_session, serve_session
from tests.peer_harness import memory_session_pair

LINK = "link-ab"
CONSUMER_CHANNEL = 0x7001


def on_mock_clock(main):
    """`main()` on a mock clock that jumps to the next deadline whenever every task waits."""
    return trio.run(main, clock=MockClock(autojump_threshold=0))


async def engine_and_raw_peer(nursery, tmp_path, *, receive_queue_bytes: int, register=None):
    """Alice's link end (her source has no Bob, so her device never delivers a frame) and a raw session to
    it, over memory, that has finished the inventory exchange; `register(end)` runs before her end starts."""
    alice_id, bob_id = generate_identity(), generate_identity()
    source = SimAliceDevice(SimParams(distance_km=25.0, **TEST_SOURCE), listen_port=0, realtime=False, seed=3)
    alice_settings = PeerSettings(LINK, listen=("127.0.0.1", 0), receive_queue_bytes=receive_queue_bytes)
    alice = LinkEnd(LINK, "alice", source, KeyStore(str(tmp_path / "alice.db"), bytes(32)), alice_settings,
                    alice_id, bob_id.public_key())
    if register is not None:
        register(alice)
    await nursery.start(alice.engine.run)
    session, alice_session, _ = await memory_session_pair(PeerSettings(LINK, dial=("127.0.0.1", 1)), alice_settings,
                                                          bob_id, alice_id)
    nursery.start_soon(serve_session, alice.channel, alice_session)
    nursery.start_soon(run_session, session)
    # an empty store's side of the resync: its point, its frame summaries, then its inventory of the frames listed
    # The store's resync runs in worker threads, while a mock clock may jump past heartbeats: a wide guard.
    with trio.fail_after(3600 if isinstance(trio.lowlevel.current_clock(), MockClock) else 10):
        fresh = ResyncPoint(bytes(range(1, 17)), 0, bytes(16), 0)
        for messages, assembler in ((encode_hello(LINK, fresh, session.max_payload_bytes), HelloAssembler(LINK)),
                                    (encode_summaries(LINK, {}, session.max_payload_bytes), SummaryAssembler(LINK)),
                                    (encode_inventory(LINK, {}, session.max_payload_bytes), InventoryAssembler(LINK))):
            for message in messages:
                await session.send(INVENTORY_CHANNEL, message)
            while not assembler.complete:
                channel, payload = await session.receive()
                assert channel == INVENTORY_CHANNEL
                assembler.add(payload)
        await alice.channel.wait_ready()
    return alice, session


def watch_peak(end, peak: dict) -> None:
    """Keep in peak["routed"] the most bytes the session's queues ever held (noted at each admission)."""
    budget = end.channel.mux.budget
    acquire = budget.acquire

    async def noted(nbytes: int) -> None:
        await acquire(nbytes)
        peak["routed"] = max(peak["routed"], budget.held_bytes)
    budget.acquire = noted


def reader_of(got: list, pause_s: float = 0.0):
    """A channel handler appending every payload to `got` (pausing `pause_s` after each)."""
    async def reader(stream):
        while True:
            got.append(await stream.receive())
            if pause_s:
                await trio.sleep(pause_s)
    return reader


def test_a_slow_channel_reader_gets_every_record_of_a_flood_in_order(tmp_path):
    """Five times the records a channel queue holds, sent in one write, to a handler that reads one
    record every 2 ms: the router waits for it instead of dropping, and holds at most the byte budget;
    the last record is read 2 ms after the one before it, as the first is."""
    budget_bytes, record_bytes, records = 16 * 1024, 1024, 5 * QUEUE_RECORDS

    async def main():
        got = []
        async with trio.open_nursery() as nursery:
            alice, session = await engine_and_raw_peer(
                nursery, tmp_path, receive_queue_bytes=budget_bytes,
                register=lambda end: end.channel.register(CONSUMER_CHANNEL, reader_of(got, pause_s=0.002)))
            peak = {"routed": 0}
            watch_peak(alice, peak)
            sent = [i.to_bytes(4, "big") * (record_bytes // 4) for i in range(records)]
            sent_at = trio.current_time()
            await session.send_many([(CONSUMER_CHANNEL, payload) for payload in sent])
            with trio.fail_after(20):
                while len(got) < records:
                    await trio.sleep(0.0005)
            took_s = trio.current_time() - sent_at
            assert got == sent
            assert (records - 1) * 0.002 <= took_s <= records * 0.002
            assert 0 < peak["routed"] <= budget_bytes + record_bytes
            assert alice.channel.queued_bytes == 0
            nursery.cancel_scope.cancel()
    on_mock_clock(main)


def test_a_peer_flooding_one_frame_is_held_to_the_byte_budget(tmp_path):
    """Bob's records for a frame Alice's device has not delivered wait in the frame's inbox while her task
    waits FRAME_ARRIVAL_WAIT_S for the frame. A peer that floods such a frame fills the inbox only up to the
    byte budget; when the task gives up (UNKNOWN_FRAME, at that wait to the mock instant) the unread bytes
    go back to the budget, and the router goes on."""
    wait_s = engine_module.FRAME_ARRIVAL_WAIT_S
    budget_bytes, body_bytes, records = 64 * 1024, 48 * 1024, 12
    flood = envelope.encode(0, [(envelope.Step.SLOTS, bytes(body_bytes))])

    async def main():
        got = []
        async with trio.open_nursery() as nursery:
            alice, session = await engine_and_raw_peer(
                nursery, tmp_path, receive_queue_bytes=budget_bytes,
                register=lambda end: end.channel.register(CONSUMER_CHANNEL, reader_of(got)))
            peak = {"routed": 0}
            watch_peak(alice, peak)
            aborts = []

            async def read_aborts():
                while True:
                    channel, payload = await session.receive()
                    frame_id, parts = envelope.decode(payload)
                    assert channel == PIPELINE_CHANNEL and parts[-1][0] == envelope.Step.ABORT
                    aborts.append((trio.current_time(), frame_id, linkmsg.decode_abort(parts[-1][1])[0]))
            nursery.start_soon(read_aborts)
            flooded_at = trio.current_time()
            for _ in range(records):
                await session.send(PIPELINE_CHANNEL, flood)
            await session.send(CONSUMER_CHANNEL, b"after the flood")
            with trio.fail_after(records * wait_s + 60):      # one wait per budget's worth
                while not got:
                    await trio.sleep(0.5)
            assert got == [b"after the flood"]
            assert peak["routed"] >= len(flood)
            assert peak["routed"] <= budget_bytes + len(flood), peak
            with trio.fail_after(2 * wait_s):   # the last inbox's wait ends too, and its bytes go back
                while alice.channel.queued_bytes:
                    await trio.sleep(0.5)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        return flooded_at, aborts

    flooded_at, aborts = on_mock_clock(main)
    # each wait ended with an abort after exactly FRAME_ARRIVAL_WAIT_S, the next began at once, and each
    # took at most a budget's worth of the flood
    assert len(aborts) >= records // (budget_bytes // len(flood) + 1)
    assert {(frame_id, reason) for _, frame_id, reason in aborts} == {(0, linkmsg.AbortReason.UNKNOWN_FRAME)}
    assert [at - flooded_at for at, _, _ in aborts] == pytest.approx(
        [wait_s * k for k in range(1, len(aborts) + 1)], abs=1e-9)


def test_a_returned_channel_handler_does_not_stall_the_router(tmp_path):
    """A handler that returns with records still queued for it: the bytes it never read go back to the
    budget, later records for it are dropped with a warning, and the session goes on."""
    async def main():
        got = []
        async with trio.open_nursery() as nursery:
            leave = trio.Event()

            async def one_then_return(stream):
                got.append(await stream.receive())
                await leave.wait()

            def register(end):
                end.channel.register(CONSUMER_CHANNEL, one_then_return)
                end.channel.register(CONSUMER_CHANNEL + 1, reader_of(got))
            alice, session = await engine_and_raw_peer(nursery, tmp_path, receive_queue_bytes=4096,
                                                       register=register)
            await session.send_many([(CONSUMER_CHANNEL, bytes([i]) * 3000) for i in range(3)]
                                    + [(CONSUMER_CHANNEL + 1, b"still routed")])
            with trio.fail_after(10):        # the first taken, the second queued, the third waits for room
                while not (got and alice.channel.queued_bytes == 3000):
                    await trio.sleep(0.01)
            await trio.sleep(0.1)
            assert got == [bytes(3000)] and alice.channel.queued_bytes == 3000
            leave.set()
            with trio.fail_after(10):
                while len(got) < 2:
                    await trio.sleep(0.01)
            assert got == [bytes(3000), b"still routed"]
            assert alice.channel.queued_bytes == 0
            nursery.cancel_scope.cancel()
    on_mock_clock(main)


def test_a_flood_of_reservations_is_answered_a_bounded_number_at_a_time(tmp_path, monkeypatch):
    """Thousands of /v1 reservations at once, in payloads of many messages: each is answered (refused:
    no such key here), but at most MAX_RECORDING are being answered at any moment."""
    from qkdd.link.key_requests import KeyRequests
    from qkdd.reservation import service as service_module
    monkeypatch.setattr(service_module, "MAX_RECORDING", 64)
    requests = 2000
    answering = {"now": 0, "peak": 0}
    reserve = KeyRequests._reserve

    async def counted(self, reservation):
        answering["now"] += 1
        answering["peak"] = max(answering["peak"], answering["now"])
        try:
            return await reserve(self, reservation)
        finally:
            answering["now"] -= 1
    monkeypatch.setattr(KeyRequests, "_reserve", counted)

    async def main():
        answers = {}
        async with trio.open_nursery() as nursery:
            alice, session = await engine_and_raw_peer(nursery, tmp_path, receive_queue_bytes=64 * 1024)
            peer = ReservationEndpoint()

            async def read_answers():
                while True:
                    channel, payload = await session.receive()
                    assert channel == RESERVATION_CHANNEL
                    for event in peer.receive(payload):
                        answers[event.request_id] = event
            nursery.start_soon(read_answers)
            messages = [peer.reserve(KeyReservation(str(uuid.uuid4()), str(uuid.uuid4()), "v1:256"))
                        for _ in range(requests)]
            for payload in pack_payloads(messages, max_bytes=8 * 1024):
                await session.send(RESERVATION_CHANNEL, payload)
            with trio.fail_after(60):
                while len(answers) < requests:
                    await trio.sleep(0.01)
            assert all(isinstance(event, ReservationRefused) and event.reason is RefuseReason.KEYS_GONE
                       for event in answers.values())
            assert 1 <= answering["peak"] <= 64, answering
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_malformed_reservation_payloads_are_dropped_and_the_session_goes_on(tmp_path):
    """Payloads that are not reservation messages (garbage, a wrong version, a truncated message, an answer
    to no request) are dropped with a warning; the next valid one is answered."""
    peer = ReservationEndpoint()
    valid = peer.reserve(KeyReservation(str(uuid.uuid4()), str(uuid.uuid4()), "v1:256"))
    answer_to_nothing = valid[:1] + bytes([2]) + valid[2:]          # an ACCEPT of a request never sent
    malformed = [b"\xff\xfe", bytes([2]) + valid[1:], valid[:-3], answer_to_nothing]

    async def main():
        async with trio.open_nursery() as nursery:
            alice, session = await engine_and_raw_peer(nursery, tmp_path, receive_queue_bytes=64 * 1024)
            await session.send_many([(RESERVATION_CHANNEL, message) for message in malformed])
            await session.send(RESERVATION_CHANNEL, valid)
            with trio.fail_after(10):
                channel, payload = await session.receive()
            assert channel == RESERVATION_CHANNEL
            [answer] = peer.receive(payload)
            assert isinstance(answer, ReservationRefused) and answer.reason is RefuseReason.KEYS_GONE
            assert alice.channel.ready
            nursery.cancel_scope.cancel()
    trio.run(main)

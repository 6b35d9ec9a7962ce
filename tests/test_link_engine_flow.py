"""Flow control between a link engine's record router and its readers, against an authenticated peer that
sends what it likes: a real engine (sim source, SQLite store, TLS peer channel with ML-DSA-65 pinned keys)
and, at the other end, a bare PeerSession that answers the key-store resync and then floods."""
import json
import math

import trio

import qkdd.link.engine as engine_module
from qkdd.hal.sim import SimParams
from qkdd.hal.sim.driver import SimAliceDevice
from qkdd.keystore import KeyStore
from qkdd.keystore.resync import InventoryAssembler, encode_inventory
from qkdd.kme.channel import ETSI014_CHANNEL
from qkdd.link import envelope, linkmsg
from qkdd.link.engine import (CH_CONTROL, CH_INVENTORY, CH_PIPELINE, CONTROL_IN_FLIGHT, ROUTED_QUEUE_RECORDS,
                              LinkEngine)
from qkdd.peer import PeerConnector, generate_identity
from tests.link_support import TEST_SOURCE
from tests.peer_harness import fast_settings

LINK = "link-ab"


async def engine_and_raw_peer(nursery, tmp_path, *, receive_queue_bytes: int):
    """Alice's engine (her source has no Bob, so her device never delivers a frame) and a raw session to
    it that has finished the inventory exchange."""
    alice_id, bob_id = generate_identity(), generate_identity()
    source = SimAliceDevice(SimParams(distance_km=25.0, **TEST_SOURCE), listen_port=0, realtime=False, seed=3)

    def connector(on_session):
        return PeerConnector(fast_settings(LINK, listen=("127.0.0.1", 0), receive_queue_bytes=receive_queue_bytes),
                             alice_id, bob_id.public_key(), on_session)

    alice = LinkEngine(LINK, "alice", source, KeyStore(str(tmp_path / "alice.db"), bytes(32)),
                       connector_factory=connector)
    await nursery.start(alice.run)
    sessions_in, sessions_out = trio.open_memory_channel(math.inf)

    async def on_session(session):
        for message in encode_inventory(LINK, {}, session.max_payload_bytes):
            await session.send(CH_INVENTORY, message)
        assembler = InventoryAssembler(LINK)
        while not assembler.complete:
            channel, payload = await session.receive()
            assert channel == CH_INVENTORY
            assembler.add(payload)
        sessions_in.send_nowait(session)
        await trio.sleep_forever()

    raw = PeerConnector(fast_settings(LINK, dial=("127.0.0.1", alice.connector.listen_port)), bob_id,
                        alice_id.public_key(), on_session)
    await nursery.start(raw.run)
    with trio.fail_after(10):
        session = await sessions_out.receive()
        while not alice._resynced.is_set():
            await trio.sleep(0.01)
    return alice, session


def watch_peak(nursery, engine, peak: dict) -> None:
    async def watch():
        while True:
            peak["routed"] = max(peak["routed"], engine.routed_bytes)
            await trio.sleep(0)
    nursery.start_soon(watch)


def read_channel(nursery, engine, got: list, pause_s: float = 0.0) -> dict:
    """Register a handler appending every payload of ETSI014_CHANNEL to `got` (pausing `pause_s` after
    each); returns the peak of the engine's routed bytes, kept up to date."""
    async def reader(stream):
        while True:
            got.append(await stream.receive())
            if pause_s:
                await trio.sleep(pause_s)
    engine.register_channel(ETSI014_CHANNEL, reader)
    peak = {"routed": 0}
    watch_peak(nursery, engine, peak)
    return peak


def test_a_slow_channel_reader_gets_every_record_of_a_flood_in_order(tmp_path):
    """Five times the records a channel queue holds, sent in one write, to a handler that reads one
    record every 2 ms: the router waits for it instead of dropping, and holds at most the byte budget."""
    budget_bytes, record_bytes, records = 16 * 1024, 1024, 5 * ROUTED_QUEUE_RECORDS

    async def main():
        got = []
        async with trio.open_nursery() as nursery:
            alice, session = await engine_and_raw_peer(nursery, tmp_path, receive_queue_bytes=budget_bytes)
            peak = read_channel(nursery, alice, got, pause_s=0.002)
            sent = [i.to_bytes(4, "big") * (record_bytes // 4) for i in range(records)]
            await session.send_many([(ETSI014_CHANNEL, payload) for payload in sent])
            with trio.fail_after(20):
                while len(got) < records:
                    await trio.sleep(0.01)
            assert got == sent
            assert 0 < peak["routed"] <= budget_bytes + record_bytes
            assert alice.routed_bytes == 0
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_a_peer_flooding_one_frame_is_held_to_the_byte_budget(tmp_path, monkeypatch):
    """Bob's records for a frame Alice's device has not delivered wait in the frame's inbox while her task
    waits for the frame. A peer that floods such a frame fills the inbox only up to the byte budget; when the
    task gives up (UNKNOWN_FRAME) the unread bytes go back to the budget, and the router goes on."""
    monkeypatch.setattr(engine_module, "FRAME_ARRIVAL_WAIT_S", 0.2)
    budget_bytes, body_bytes, records = 64 * 1024, 48 * 1024, 12

    async def main():
        got = []
        async with trio.open_nursery() as nursery:
            alice, session = await engine_and_raw_peer(nursery, tmp_path, receive_queue_bytes=budget_bytes)
            peak = read_channel(nursery, alice, got)
            aborts = []

            async def read_aborts():
                while True:
                    channel, payload = await session.receive()
                    frame_id, parts = envelope.decode(payload)
                    assert channel == CH_PIPELINE and parts[-1][0] == envelope.Step.ABORT
                    aborts.append((frame_id, linkmsg.decode_abort(parts[-1][1])[0]))
            nursery.start_soon(read_aborts)
            flood = envelope.encode(0, [(envelope.Step.SLOTS, bytes(body_bytes))])
            for _ in range(records):
                await session.send(CH_PIPELINE, flood)
            await session.send(ETSI014_CHANNEL, b"after the flood")
            with trio.fail_after(20):         # 12 records, one 0.2 s wait per budget's worth
                while not got:
                    await trio.sleep(0.01)
            assert got == [b"after the flood"]
            assert peak["routed"] >= len(flood)
            assert peak["routed"] <= budget_bytes + len(flood), peak
            # each wait ended with an abort, and each took at most a budget's worth of the flood
            assert len(aborts) >= records // (budget_bytes // len(flood) + 1)
            assert set(aborts) == {(0, linkmsg.AbortReason.UNKNOWN_FRAME)}
            assert alice.routed_bytes == 0
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_a_returned_channel_handler_does_not_stall_the_router(tmp_path):
    """A handler that returns with records still queued for it: the bytes it never read go back to the
    budget, later records for it are dropped with a warning, and the session goes on."""
    async def main():
        got = []
        async with trio.open_nursery() as nursery:
            alice, session = await engine_and_raw_peer(nursery, tmp_path, receive_queue_bytes=4096)
            leave = trio.Event()

            async def one_then_return(stream):
                got.append(await stream.receive())
                await leave.wait()
            alice.register_channel(ETSI014_CHANNEL, one_then_return)

            async def reader(stream):
                while True:
                    got.append(await stream.receive())
            alice.register_channel(ETSI014_CHANNEL + 1, reader)
            await session.send_many([(ETSI014_CHANNEL, bytes([i]) * 3000) for i in range(3)]
                                    + [(ETSI014_CHANNEL + 1, b"still routed")])
            with trio.fail_after(10):        # the first taken, the second queued, the third waits for room
                while not (got and alice.routed_bytes == 3000):
                    await trio.sleep(0.01)
            await trio.sleep(0.1)
            assert got == [bytes(3000)] and alice.routed_bytes == 3000
            leave.set()
            with trio.fail_after(10):
                while len(got) < 2:
                    await trio.sleep(0.01)
            assert got == [bytes(3000), b"still routed"]
            assert alice.routed_bytes == 0
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_a_flood_of_control_messages_is_handled_a_bounded_number_at_a_time(tmp_path):
    """Thousands of reservation requests at once: each is answered, but the engine handles at most
    CONTROL_IN_FLIGHT at a time (not one task per message), and an overlong message is dropped."""
    requests = 2000

    async def main():
        answers = {}
        async with trio.open_nursery() as nursery:
            alice, session = await engine_and_raw_peer(nursery, tmp_path, receive_queue_bytes=64 * 1024)
            session_tasks = alice._session_nursery
            baseline, peak = len(session_tasks.child_tasks), {"tasks": 0}

            async def watch():
                while True:
                    peak["tasks"] = max(peak["tasks"], len(session_tasks.child_tasks))
                    await trio.sleep(0)
            nursery.start_soon(watch)

            async def read_answers():
                while True:
                    channel, payload = await session.receive()
                    assert channel == CH_CONTROL
                    answer = json.loads(payload)
                    answers[answer["request"]] = answer
            nursery.start_soon(read_answers)
            overlong = {"type": "reserve", "request": -1, "key_id": "x" * 5000, "holder": "v1:256"}
            await session.send(CH_CONTROL, json.dumps(overlong).encode())
            await session.send_many([(CH_CONTROL, json.dumps({"type": "reserve", "request": i, "key_id": "no-such-key",
                                                              "holder": "v1:256"}).encode()) for i in range(requests)])
            with trio.fail_after(30):
                while len(answers) < requests:
                    await trio.sleep(0.01)
            await trio.sleep(0.1)
            assert sorted(answers) == list(range(requests))
            assert not any(answer["ok"] for answer in answers.values())
            assert CONTROL_IN_FLIGHT // 2 <= peak["tasks"] - baseline <= CONTROL_IN_FLIGHT, (peak, baseline)
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_malformed_control_messages_are_dropped_and_the_session_goes_on(tmp_path):
    """Control messages that are not JSON objects with an integer request id (non-UTF-8, a list, a float
    too large for an int, NaN, a string) are dropped with a warning; the next valid one is answered."""
    malformed = [b"\xff\xfe", b"[1, 2]", b'{"type": "reserve"}', b'{"type": "reserve", "request": 1e999}',
                 b'{"type": "reserve", "request": NaN}', b'{"type": "reserve", "request": "x"}',
                 b'{"type": "reserved", "request": -1e400}']

    async def main():
        async with trio.open_nursery() as nursery:
            alice, session = await engine_and_raw_peer(nursery, tmp_path, receive_queue_bytes=64 * 1024)
            await session.send_many([(CH_CONTROL, message) for message in malformed])
            await session.send(CH_CONTROL, json.dumps({"type": "reserve", "request": 7, "key_id": "no-such-key",
                                                       "holder": "v1:256"}).encode())
            with trio.fail_after(10):
                channel, payload = await session.receive()
            assert channel == CH_CONTROL
            answer = json.loads(payload)
            assert answer["request"] == 7 and answer["ok"] is False
            assert alice.session is not None
            nursery.cancel_scope.cancel()
    trio.run(main)

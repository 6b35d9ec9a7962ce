"""The slave's KME recording reservations over a stream (real SQLite key store and ledger, the master's
end a sans-IO ReservationEndpoint in memory): on a live link Alice commits a frame before she tells Bob
to, so a master at Alice may reserve keys that Bob still holds PENDING."""
from __future__ import annotations

import os
import uuid

import trio
import trio.testing

from qkdd.keystore import KeyState, KeyStore, create_kek
from qkdd.kme.config import Etsi014Config, PeerKmeConfig, SaeConfig
from qkdd.kme.container import plan_keys
from qkdd.kme.ledger import Ledger
from qkdd.reservation.protocol import Etsi014Reservation, ReservationAccepted, ReservationEndpoint, ReservationRefused
from qkdd.kme.service import KmeService
from tests.reservation_support import MemoryStream, serve_kme

LINK = "a-b"


def slave_kme(tmp_path, *, ledger_file: bool = True) -> tuple[KmeService, KeyStore]:
    """The slave's KME; its ledger in a file of its own, or (the daemon's default) in the key store's."""
    config = Etsi014Config(kme_id="kme-b", saes=(SaeConfig("sae-a", "kme-a"), SaeConfig("sae-b", "kme-b")),
                           peers=(PeerKmeConfig("kme-a", LINK),))
    store = KeyStore(str(tmp_path / "keys.sqlite3"), create_kek(str(tmp_path / "kek")))
    ledger = Ledger(str(tmp_path / "etsi014.db")) if ledger_file else Ledger(database=store.database)
    return KmeService(config, store, ledger), store


def exchange(service: KmeService, *reservations: Etsi014Reservation) -> list:
    """Send `reservations` from the master's end in one payload; the slave KME's answer events."""
    async def run() -> list:
        to_slave, slave_in = trio.open_memory_channel[bytes](4)
        slave_out, from_slave = trio.open_memory_channel[bytes](4)
        master = ReservationEndpoint()
        events: list = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run)
            nursery.start_soon(serve_kme, service, LINK, MemoryStream(slave_in, slave_out))
            await to_slave.send(b"".join(master.reserve(reservation) for reservation in reservations))
            with trio.fail_after(10):
                while len(events) < len(reservations):
                    events += master.receive(await from_slave.receive())
            nursery.cancel_scope.cancel()
        return events
    return trio.run(run)


def reservation_of(stored: list[tuple[str, bytes]]) -> Etsi014Reservation:
    keys = plan_keys([(key_id, len(material) * 8) for key_id, material in stored], 2, 256)
    return Etsi014Reservation(str(uuid.uuid4()), "sae-a", ("sae-b",), 256, keys)


def test_keys_still_pending_at_the_slave_are_promoted_and_reserved(tmp_path):
    service, store = slave_kme(tmp_path)
    stored = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(2)]
    store.put_pending(LINK, 7, stored, expires_at=4e9, allocatable=[False, False])     # Alice's COMMIT not here yet
    reservation = reservation_of(stored)
    [event] = exchange(service, reservation)
    assert isinstance(event, ReservationAccepted)
    assert [store.state(LINK, key_id) for key_id, _ in stored] == [KeyState.RESERVED] * 2
    assert store.commit_frame(LINK, 7) == 0                          # the late COMMIT changes nothing
    assert [store.state(LINK, key_id) for key_id, _ in stored] == [KeyState.RESERVED] * 2
    assert set(service.ledger.lookup([key.key_id for key in reservation.keys])) == {
        key.key_id for key in reservation.keys}


def test_a_delivered_key_is_refused_and_nothing_is_recorded(tmp_path):
    service, store = slave_kme(tmp_path)
    stored = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(2)]
    store.put_pending(LINK, 7, stored, expires_at=4e9, allocatable=[False, False])
    store.commit_frame(LINK, 7)
    store.deliver(LINK, stored[1][0])                                 # handed out here already
    reservation = reservation_of(stored)
    [event] = exchange(service, reservation)
    assert isinstance(event, ReservationRefused)
    assert store.state(LINK, stored[0][0]) is KeyState.AVAILABLE
    assert service.ledger.lookup([key.key_id for key in reservation.keys]) == {}


def test_a_key_of_the_slaves_own_share_is_refused_and_stays_its_to_hand_out(tmp_path):
    """Each end hands out its own share of the stored keys (`allocatable`); a peer naming a key of this
    end's share, and one still pending here, is refused and changes nothing."""
    from qkdd.reservation.protocol import RefuseReason

    service, store = slave_kme(tmp_path)
    stored = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(4)]
    store.put_pending(LINK, 7, stored[:2], expires_at=4e9, allocatable=[False, True])
    store.commit_frame(LINK, 7)
    store.put_pending(LINK, 8, stored[2:], expires_at=4e9, allocatable=[True, False])     # still pending
    committed, pending = reservation_of(stored[:2]), reservation_of(stored[2:])
    events = exchange(service, committed, pending)
    assert [type(event) for event in events] == [ReservationRefused, ReservationRefused]
    assert {event.reason for event in events} == {RefuseReason.KEYS_UNAVAILABLE}
    assert [store.state(LINK, key_id) for key_id, _ in stored] == [KeyState.AVAILABLE] * 2 + [KeyState.PENDING] * 2
    assert service.ledger.lookup([key.key_id for key in committed.keys + pending.keys]) == {}


def test_one_payload_of_reservations_is_answered_each_on_its_own(tmp_path):
    service, store = slave_kme(tmp_path, ledger_file=False)
    stored = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(6)]
    store.put_pending(LINK, 7, stored, expires_at=4e9, allocatable=[False] * 6)
    store.commit_frame(LINK, 7)
    store.deliver(LINK, stored[3][0])                                 # the second request's key is gone
    first, second, third = (reservation_of(stored[i:i + 2]) for i in (0, 2, 4))
    stranger = Etsi014Reservation(str(uuid.uuid4()), "sae-a", ("sae-x",), 256, first.keys)     # not served here
    events = exchange(service, first, second, stranger, third)
    assert [type(event) for event in events] == [ReservationAccepted, ReservationRefused, ReservationRefused,
                                                 ReservationAccepted]
    assert [event.request_id for event in events] == [r.request_id for r in (first, second, stranger, third)]
    assert [store.state(LINK, key_id) for key_id, _ in stored] == [
        KeyState.RESERVED, KeyState.RESERVED, KeyState.AVAILABLE, KeyState.DELIVERED, KeyState.RESERVED,
        KeyState.RESERVED]
    assert set(service.ledger.lookup([key.key_id for r in (first, second, third) for key in r.keys])) == {
        key.key_id for r in (first, third) for key in r.keys}


def test_a_reservation_the_ledger_refuses_leaves_its_stored_keys_available(tmp_path):
    service, store = slave_kme(tmp_path, ledger_file=False)
    stored = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(4)]
    store.put_pending(LINK, 7, stored, expires_at=4e9, allocatable=[False] * 4)
    store.commit_frame(LINK, 7)
    first = reservation_of(stored[:2])
    reused_ids = Etsi014Reservation(str(uuid.uuid4()), "sae-a", ("sae-b",), 256, tuple(
        type(key)(key.key_id, tuple(type(s)(stored[2 + i][0], 0, 32) for s in key.segments))
        for i, key in enumerate(first.keys)))                        # other stored keys, the same key ids
    events = exchange(service, first, reused_ids)
    assert [type(event) for event in events] == [ReservationAccepted, ReservationRefused]
    # the key store's reservation and the ledger's record commit together, or neither does
    assert [store.state(LINK, key_id) for key_id, _ in stored[2:]] == [KeyState.AVAILABLE] * 2


def test_housekeeping_forgets_reservations_whose_stored_keys_expired_before_anyone_fetched_them(tmp_path):
    import time

    from qkdd.kme.ledger import DELIVERED_GRACE_S

    service, store = slave_kme(tmp_path, ledger_file=False)
    soon, later = time.time() + 60, time.time() + 10 * DELIVERED_GRACE_S
    short = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(2)]
    long = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(2)]
    store.put_pending(LINK, 7, short, expires_at=soon, allocatable=[False] * 2)
    store.put_pending(LINK, 8, long, expires_at=later, allocatable=[False] * 2)
    for frame in (7, 8):
        store.commit_frame(LINK, frame)
    expiring, lasting = reservation_of(short), reservation_of(long)
    assert [type(event) for event in exchange(service, expiring, lasting)] == [ReservationAccepted] * 2
    past_grace = time.time() + DELIVERED_GRACE_S + 1
    assert service.purge_ledger(now=past_grace) == (0, 0)             # nothing expired yet
    assert store.expire(now=soon + 1) == 2                            # the short-lived keys expire unfetched
    assert service.purge_ledger(now=past_grace) == (0, 2)
    all_ids = [key.key_id for key in expiring.keys + lasting.keys]
    assert set(service.ledger.lookup(all_ids)) == {key.key_id for key in lasting.keys}


def test_a_peer_sending_faster_than_the_store_records_is_slowed_not_queued_without_end(tmp_path, monkeypatch):
    """With the store stalled, the slave's end takes reservations up to MAX_RECORDING (here 3) and then
    stops reading its stream, so the master's sends wait; once the store moves, every one is accepted."""
    import threading

    from qkdd.reservation import service as service_module
    monkeypatch.setattr(service_module, "MAX_RECORDING", 3)
    service, store = slave_kme(tmp_path)
    stored = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(10)]
    store.put_pending(LINK, 1, stored, expires_at=4e9, allocatable=[False] * 10)
    store.commit_frame(LINK, 1)
    reservations = [reservation_of(stored[2 * i:2 * i + 2]) for i in range(5)]
    store_moves = threading.Event()
    record = service._store_reservations

    def stalled_store(link_id, batch):         # the real store, once the test lets it go on
        store_moves.wait(10)
        return record(link_id, batch)

    monkeypatch.setattr(service, "_store_reservations", stalled_store)
    master = ReservationEndpoint()

    async def run() -> tuple[bool, list]:
        to_slave, slave_in = trio.open_memory_channel[bytes](0)
        slave_out, from_slave = trio.open_memory_channel[bytes](16)
        events: list = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run)
            nursery.start_soon(serve_kme, service, LINK, MemoryStream(slave_in, slave_out))
            await to_slave.send(b"".join(master.reserve(r) for r in reservations[:3]))   # fills the budget
            await to_slave.send(master.reserve(reservations[3]))     # taken, waits for room
            last_sent = trio.Event()

            async def send_last():
                await to_slave.send(master.reserve(reservations[4]))  # not read while the reader waits
                last_sent.set()
            nursery.start_soon(send_last)
            await trio.testing.wait_all_tasks_blocked()               # every task waits, the store too
            slowed = not last_sent.is_set()
            store_moves.set()
            with trio.fail_after(10):
                await last_sent.wait()
                while len(events) < 5:
                    events += master.receive(await from_slave.receive())
            nursery.cancel_scope.cancel()
        return slowed, events

    slowed, events = trio.run(run)
    assert slowed, "the slave's end kept reading while its store was stalled past MAX_RECORDING"
    assert all(isinstance(event, ReservationAccepted) for event in events)
    assert {event.request_id for event in events} == {r.request_id for r in reservations}


def test_a_session_ending_as_the_store_records_ends_the_exchange_quietly(tmp_path, monkeypatch):
    """The store's answer can reach the recording task in the same scheduler pass as the session's end
    (modelled here by a shielded store call): the endpoint has forgotten the request by then, so no
    answer goes out, and the exchange ends without an error."""
    import threading

    service, store = slave_kme(tmp_path)
    stored = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(2)]
    store.put_pending(LINK, 1, stored, expires_at=4e9, allocatable=[False] * 2)
    store.commit_frame(LINK, 1)
    store_moves = threading.Event()
    record = service._store_reservations

    def stalled_store(link_id, batch):
        store_moves.wait(10)
        return record(link_id, batch)

    monkeypatch.setattr(service, "_store_reservations", stalled_store)
    call = service._store.call

    async def answer_already_delivered(*args):
        with trio.CancelScope(shield=True):
            return await call(*args)

    monkeypatch.setattr(service._store, "call", answer_already_delivered)

    async def run() -> None:
        to_slave, slave_in = trio.open_memory_channel[bytes](1)
        slave_out, _from_slave = trio.open_memory_channel[bytes](16)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run)
            with trio.fail_after(10):
                async with trio.open_nursery() as session:
                    session.start_soon(serve_kme, service, LINK, MemoryStream(slave_in, slave_out))
                    await to_slave.send(ReservationEndpoint().reserve(reservation_of(stored)))
                    await trio.testing.wait_all_tasks_blocked()     # the store is recording it
                    await to_slave.aclose()                    # the session ends
                    await trio.testing.wait_all_tasks_blocked()
                    store_moves.set()
            nursery.cancel_scope.cancel()

    trio.run(run)
    assert [store.state(LINK, key_id) for key_id, _ in stored] == [KeyState.RESERVED] * 2


def test_a_segment_past_the_end_of_its_stored_key_is_refused_and_nothing_is_recorded(tmp_path):
    """Accepted, such a key could never be delivered (the slave SAE's Get key with key IDs would fail
    each time) while the master's SAE already holds its copy."""
    from qkdd.reservation.protocol import ReservedKey, Segment

    service, store = slave_kme(tmp_path, ledger_file=False)
    stored = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(2)]
    store.put_pending(LINK, 7, stored, expires_at=4e9, allocatable=[False, False])
    store.commit_frame(LINK, 7)
    inside = ReservedKey(str(uuid.uuid4()), (Segment(stored[0][0], 0, 32),))
    beyond = ReservedKey(str(uuid.uuid4()), (Segment(stored[1][0], 16, 32),))     # 48 bytes of a 32-byte key
    reservation = Etsi014Reservation(str(uuid.uuid4()), "sae-a", ("sae-b",), 256, (inside, beyond))
    [event] = exchange(service, reservation)
    assert isinstance(event, ReservationRefused) and stored[1][0] in event.text
    assert [store.state(LINK, key_id) for key_id, _ in stored] == [KeyState.AVAILABLE] * 2
    assert service.ledger.lookup([inside.key_id, beyond.key_id]) == {}


def test_a_store_that_fails_in_sqlite_refuses_the_reservation_and_the_exchange_goes_on(tmp_path, monkeypatch):
    import sqlite3

    from qkdd.reservation.protocol import RefuseReason

    service, store = slave_kme(tmp_path, ledger_file=False)
    stored = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(2)]
    store.put_pending(LINK, 7, stored, expires_at=4e9, allocatable=[False, False])
    store.commit_frame(LINK, 7)

    def failing_record(link_id, reservation):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(service.ledger, "record", failing_record)
    [event] = exchange(service, reservation_of(stored))
    assert isinstance(event, ReservationRefused) and event.reason is RefuseReason.STORE_FAILURE
    assert [store.state(LINK, key_id) for key_id, _ in stored] == [KeyState.AVAILABLE] * 2

"""The master KME takes stored keys a block at a time (real SQLite key store and ledger): the block is
erased in the key store at once, `stored_key_count` counts what the pool still holds, and a restart loses
the rest of the block rather than handing any of it out again."""
from __future__ import annotations

import os
import uuid

import trio
import trio.testing

from qkdd.keystore import KeyState, KeyStore
from qkdd.kme.config import Etsi014Config, PeerKmeConfig, SaeConfig
from qkdd.kme.ledger import Ledger
from qkdd.reservation.protocol import ReservationEndpoint
from qkdd.kme.service import KmeService
from tests.reservation_support import MemoryStream, serve_kme

LINK = "a-b"
CONFIG = Etsi014Config(kme_id="kme-a", saes=(SaeConfig("sae-a", "kme-a"), SaeConfig("sae-b", "kme-b")),
                       peers=(PeerKmeConfig(kme_id="kme-b", link_id=LINK),))


def seeded_store(tmp_path, count: int) -> tuple[KeyStore, list[str]]:
    store = KeyStore(str(tmp_path / "keys.db"), os.urandom(32))
    keys = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(count)]
    store.put_pending(LINK, 0, keys, expires_at=4e9)
    store.commit_frame(LINK, 0)
    return store, [key_id for key_id, _ in keys]


def connect_in_memory(service: KmeService, nursery: trio.Nursery) -> tuple[trio.MemorySendChannel,
                                                                          trio.MemoryReceiveChannel]:
    """Start the service's exchange over an in-memory session; the slave's end of it: (to the master,
    from the master)."""
    to_master, master_in = trio.open_memory_channel[bytes](4)
    master_out, from_master = trio.open_memory_channel[bytes](4)
    nursery.start_soon(serve_kme, service, LINK, MemoryStream(master_in, master_out))
    return to_master, from_master


async def accept_everything(to_master: trio.MemorySendChannel, from_master: trio.MemoryReceiveChannel) -> None:
    """The slave's end in memory: ACCEPT every reservation, one answer payload per payload."""
    endpoint = ReservationEndpoint()
    while True:
        events = endpoint.receive(await from_master.receive())
        await to_master.send(b"".join(endpoint.accept(event.reservation.request_id) for event in events))


def take(service: KmeService, bits: int) -> dict[str, bytes]:
    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run)
            taken = await service._take_keys(LINK, bits)
            with trio.fail_after(10):
                while service._refilling_ahead:                # the next block, fetched in the background
                    await trio.sleep(0.01)
            status = await service.status("sae-a", "sae-b")
            nursery.cancel_scope.cancel()
        return taken, status["stored_key_count"]
    return trio.run(main)


def test_a_block_is_erased_at_once_counted_while_pooled_and_lost_on_restart(tmp_path):
    store, ids = seeded_store(tmp_path, 20)
    service = KmeService(CONFIG, store, Ledger(str(tmp_path / "ledger.db")), take_block_bits=8 * 256)
    taken, count = take(service, 256)
    assert list(taken) == ids[:1]
    # the whole block, and the next one since the pool then held less than a block
    assert [store.state(LINK, key_id) for key_id in ids[:16]] == [KeyState.DELIVERED] * 16
    assert store.state(LINK, ids[16]) is KeyState.AVAILABLE
    assert count == 19                                      # 15 pooled + 4 stored

    restarted = KmeService(CONFIG, store, Ledger(str(tmp_path / "ledger.db")), take_block_bits=8 * 256)
    taken, count = take(restarted, 2 * 256)
    assert list(taken) == ids[16:18]                        # the old pool's 15 are gone, never reused
    assert count == 2                                       # 2 pooled, none stored


def test_a_request_larger_than_a_block_and_a_store_smaller_than_a_block(tmp_path):
    store, ids = seeded_store(tmp_path, 5)
    service = KmeService(CONFIG, store, Ledger(str(tmp_path / "ledger.db")), take_block_bits=8 * 256)
    taken, count = take(service, 3 * 256)                   # only 5 stored: takes what the request needs
    assert list(taken) == ids[:3] and count == 2


def test_the_pool_is_refilled_in_the_background_once_it_holds_less_than_a_block(tmp_path):
    store, ids = seeded_store(tmp_path, 20)
    service = KmeService(CONFIG, store, Ledger(str(tmp_path / "ledger.db")), take_block_bits=8 * 256)

    async def wait_delivered(key_id: str) -> None:
        with trio.fail_after(10):
            while store.state(LINK, key_id) is not KeyState.DELIVERED:
                await trio.sleep(0.01)

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run)
            first = await service._take_keys(LINK, 4 * 256)          # a block of 8, 4 left: the next comes ahead
            await wait_delivered(ids[15])
            second = await service._take_keys(LINK, 256)             # 11 left: no refill
            await trio.testing.wait_all_tasks_blocked()
            assert store.state(LINK, ids[16]) is KeyState.AVAILABLE
            third = await service._take_keys(LINK, 4 * 256)          # 7 left: the rest of the store comes
            await wait_delivered(ids[19])
            nursery.cancel_scope.cancel()
        return list(first) + list(second) + list(third)

    assert trio.run(main) == ids[:9]
    assert [store.state(LINK, key_id) for key_id in ids] == [KeyState.DELIVERED] * 20


def test_the_ledger_lives_in_the_key_store_file_unless_an_earlier_one_exists(tmp_path):
    from qkdd.kme import open_kme
    fresh, earlier = tmp_path / "fresh", tmp_path / "earlier"
    for state_dir in (fresh, earlier):
        state_dir.mkdir()
    Ledger(str(earlier / "etsi014.db")).close()
    for state_dir, ledger_path in ((fresh, fresh / "keys.db"), (earlier, earlier / "etsi014.db")):
        store = KeyStore(str(state_dir / "keys.db"), os.urandom(32))
        service = open_kme(CONFIG, str(state_dir), store)
        assert service.ledger.path == str(ledger_path)
    assert not (fresh / "etsi014.db").exists()


def test_an_unanswered_reservation_ends_in_503_at_its_deadline_and_a_late_answer_changes_nothing(tmp_path, caplog):
    """On trio's MockClock with the KME's own timeout (5 s): the SAE's Get key ends in a 503 at the link's
    first reservation sweep at or after the deadline, counted from when the RESERVE went out."""
    import pytest
    from trio.testing import MockClock

    from qkdd.kme.errors import KeysUnavailable
    from qkdd.kme.key_request import KeyRequest
    from qkdd.reservation.service import SWEEP_INTERVAL_S

    store, ids = seeded_store(tmp_path, 20)
    service = KmeService(CONFIG, store, Ledger(str(tmp_path / "ledger.db")), take_block_bits=8 * 256)
    timeout_s = CONFIG.reservation_timeout_s

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run)
            to_master, from_master = connect_in_memory(service, nursery)
            await trio.testing.wait_all_tasks_blocked()
            answered = trio.Event()
            result = {}

            async def get_key():
                with pytest.raises(KeysUnavailable) as refused:
                    await service.get_keys("sae-a", "sae-b", KeyRequest(1, 256, ()))
                result.update(error=refused.value, at=trio.current_time())
                answered.set()

            nursery.start_soon(get_key)
            slave = ReservationEndpoint()
            [received] = slave.receive(await from_master.receive())        # it goes out, unanswered
            sent_at = trio.current_time()
            with trio.fail_after(3600):      # mock seconds: a request that never ends fails fast
                await answered.wait()
            await to_master.send(slave.accept(received.reservation.request_id))   # too late
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        return result["error"], result["at"] - sent_at, received.reservation

    error, waited, reservation = trio.run(main, clock=MockClock(autojump_threshold=0))
    assert "did not confirm" in str(error.details)
    assert timeout_s <= waited < timeout_s + SWEEP_INTERVAL_S
    assert reservation.stored_key_ids() == ids[:1]
    assert store.state(LINK, ids[0]) is KeyState.DELIVERED                # erased here, never handed out again
    assert "late answer to abandoned ETSI014 request" in caplog.text


def test_get_key_outcomes_are_counted_in_the_metrics(tmp_path):
    """A confirmed Get key counts its keys and the reservation's round trip; a request with no peer
    session, and one the store cannot serve, count as 503s by cause (real key store, in-memory peer)."""
    from prometheus_client.parser import text_string_to_metric_families

    from qkdd.kme.errors import KeysUnavailable
    from qkdd.kme.key_request import KeyRequest
    from qkdd.metrics import Metrics

    store, _ = seeded_store(tmp_path, 3)
    metrics = Metrics()
    service = KmeService(CONFIG, store, Ledger(str(tmp_path / "ledger.db")), take_block_bits=8 * 256,
                         metrics=metrics)

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run)
            try:
                await service.get_keys("sae-a", "sae-b", KeyRequest(1, 256, ()))    # no session yet
            except KeysUnavailable:
                pass
            nursery.start_soon(accept_everything, *connect_in_memory(service, nursery))
            await trio.testing.wait_all_tasks_blocked()
            keys = await service.get_keys("sae-a", "sae-b", KeyRequest(2, 256, ()))
            try:
                await service.get_keys("sae-a", "sae-b", KeyRequest(2, 256, ()))    # one stored key left
            except KeysUnavailable:
                pass
            nursery.cancel_scope.cancel()
        return keys

    assert len(trio.run(main)) == 2
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics.exposition().decode())
               for s in family.samples if s.name.startswith("qkd_etsi014")}
    assert samples[("qkd_etsi014_keys_total", (("end", "master"), ("link_id", LINK)))] == 2
    assert samples[("qkd_etsi014_keys_total", (("end", "slave"), ("link_id", LINK)))] == 0
    assert samples[("qkd_etsi014_reservation_seconds_count", (("link_id", LINK),))] == 1
    unavailable = {dict(labels)["reason"]: value for (name, labels), value in samples.items()
                   if name == "qkd_etsi014_unavailable_total"}
    assert unavailable == {"peer_unreachable": 1, "no_key": 1, "peer_refused": 0, "peer_timeout": 0}


def test_a_refusal_reaches_the_sae_as_its_reason_in_fixed_words_and_the_peer_text_only_the_log(tmp_path, caplog):
    """The slave's KME refuses (its text naming a stored key): the master's SAE gets a 503 saying why in
    the KME's own words, never the peer's text; the peer's text is in this daemon's log."""
    import pytest

    from qkdd.kme.errors import KeysUnavailable
    from qkdd.kme.key_request import KeyRequest
    from qkdd.reservation.protocol import RefuseReason

    store, ids = seeded_store(tmp_path, 4)
    service = KmeService(CONFIG, store, Ledger(str(tmp_path / "ledger.db")), take_block_bits=8 * 256)
    peer_text = f"stored key {ids[0]} is gone"

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run)
            to_master, from_master = connect_in_memory(service, nursery)

            async def refusing_slave():
                endpoint = ReservationEndpoint()
                [event] = endpoint.receive(await from_master.receive())
                await to_master.send(endpoint.refuse(event.reservation.request_id, RefuseReason.KEYS_UNAVAILABLE,
                                                     peer_text))

            nursery.start_soon(refusing_slave)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(KeysUnavailable) as refused:
                await service.get_keys("sae-a", "sae-b", KeyRequest(1, 256, ()))
            nursery.cancel_scope.cancel()
        return refused.value

    error = trio.run(main)
    assert error.message == "keys are not available" and error.retry_after_s == 1
    assert error.details == [{"reason": "the slave SAE's KME refused the reservation: the stored keys are not "
                                        "available there"}]
    assert peer_text in caplog.text and "KEYS_UNAVAILABLE" in caplog.text


def test_a_request_too_fragmented_for_one_reservation_message_is_a_503_not_a_crash(tmp_path):
    """Stored keys of 8 bits (a device with tiny keys; a link stores 64 or more): one key of 70 000 bytes
    would need 70 000 segments, more than a RESERVE message describes. The SAE gets a 503 saying so; the
    KME goes on serving (a smaller request succeeds)."""
    from dataclasses import replace

    import pytest

    from qkdd.kme.errors import KeysUnavailable
    from qkdd.kme.key_request import KeyRequest

    store = KeyStore(str(tmp_path / "keys.db"), os.urandom(32))
    store.put_pending(LINK, 0, [(str(uuid.uuid4()), os.urandom(1)) for _ in range(70_010)], expires_at=4e9)
    store.commit_frame(LINK, 0)
    config = replace(CONFIG, max_key_size_bits=70_000 * 8, max_key_per_request=1)
    service = KmeService(config, store, Ledger(str(tmp_path / "ledger.db")), take_block_bits=8 * 256)

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run)
            nursery.start_soon(accept_everything, *connect_in_memory(service, nursery))
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(KeysUnavailable) as refused:
                await service.get_keys("sae-a", "sae-b", KeyRequest(1, 70_000 * 8, ()))
            keys = await service.get_keys("sae-a", "sae-b", KeyRequest(1, 16, ()))
            nursery.cancel_scope.cancel()
        return refused.value, keys

    error, keys = trio.run(main)
    assert "too fragmented" in str(error.details)
    assert len(keys) == 1 and len(keys[0][1]) == 2


def test_a_key_store_that_cannot_write_makes_get_key_a_503_and_the_refill_ahead_stops_quietly(tmp_path, caplog):
    """A full disk under the master's key store: the take's group commit fails with SQLite's own error.
    The request finds no keys (a 503, the pool as it was); the refill ahead of need, a background task of the
    KME, logs it and ends instead of ending the daemon; keys are taken again once the store writes."""
    import logging
    import sqlite3

    import pytest

    from qkdd.keystore import KeyUnavailable

    store, ids = seeded_store(tmp_path, 20)
    service = KmeService(CONFIG, store, Ledger(str(tmp_path / "ledger.db")), take_block_bits=8 * 256)
    real_take, disk_full = service._take_block, [False]

    def take_block(link_id, min_bits):
        if disk_full[0]:
            raise sqlite3.OperationalError("database or disk is full")
        return real_take(link_id, min_bits)
    service._take_block = take_block

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run)
            first = await service._take_keys(LINK, 7 * 256)       # a block of 8, one left: a refill ahead starts
            disk_full[0] = True
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(KeyUnavailable):
                await service._take_keys(LINK, 2 * 256)            # the pool holds 1, the store cannot take
            disk_full[0] = False
            again = await service._take_keys(LINK, 2 * 256)
            nursery.cancel_scope.cancel()
        return first, again

    caplog.set_level(logging.WARNING, logger="qkdd.etsi014")
    first, again = trio.run(main)
    assert list(first) == ids[:7] and len(again) == 2 and not set(again) & set(first)
    assert "could not take keys for ETSI 014" in caplog.text

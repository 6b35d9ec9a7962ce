"""An ETSI 014 key relayed to a slave's KME on a non-adjacent node and then rolled back by its source (the
source died after DONE, before serving it): the rollback withdraws the slave KME's reservation with the key,
in the same transaction, so Get key with key IDs answers for its keys exactly as for keys never recorded,
and no ledger record is left behind. Real relay service objects over real TCP/TLS sessions, a real SQLite
key store file per node and the real KME and ledger at the destination (tests/relay_sockets.py). A Get key
asking more than one relay request carries goes in parts, served only when all are confirmed; a part that
fails rolls back the ones before it."""
from __future__ import annotations

import uuid

import pytest
import trio

from qkdd.keystore import KeyState
from qkdd.kme.config import Etsi014Config, PeerKmeConfig, SaeConfig
from qkdd.kme.container import plan_keys
from qkdd.kme.errors import BadRequest, KeysUnavailable
from qkdd.kme.key_request import KeyRequest
from qkdd.kme.ledger import Ledger
from qkdd.kme.service import KmeService
from qkdd.relay.service import RELAY_LINK_ID
from qkdd.reservation.protocol import Etsi014Reservation, encode_reserve
from tests.relay_sockets import SocketNet, state_of

CHAIN = (["S", "R", "D"], [("S", "R"), ("R", "D")])


def slave_kme(node) -> KmeService:
    """The daemon's wiring at the destination: the KME records a relayed key's note, and forgets it when
    the key is rolled back (qkdd/daemon.py)."""
    config = Etsi014Config(kme_id="kme-d", saes=(SaeConfig("sae-s", "kme-s"), SaeConfig("sae-d", "kme-d")),
                           peers=(PeerKmeConfig("kme-s", node="S"),))
    kme = KmeService(config, node.store, Ledger(database=node.store.database))
    node.service.note_handler = kme.record_relayed
    node.service.rollback_handler = kme.forget_relayed
    return kme


async def refusal_of(kme: KmeService, key_ids: list[str]) -> tuple[str, list]:
    with pytest.raises(BadRequest) as refused:
        await kme.keys_by_id("sae-d", "sae-s", key_ids)
    return refused.value.message, refused.value.details


def test_relay_rollback_of_an_etsi014_key_withdraws_the_slave_reservation(tmp_path):
    async def main():
        net = SocketNet(tmp_path, *CHAIN)
        kmes = {}
        async with trio.open_nursery() as nursery:
            await net.start("S", nursery)
            await net.start("R", nursery)
            await net.start("D", nursery, before_run=lambda node: kmes.setdefault("D", slave_kme(node)))
            kme = kmes["D"]
            await net.wait_route("S", "D", hops=2)
            # the note the master's KME sends (KmeService._get_keys_relayed): 2 keys of 256 bits cut from one
            placeholder = str(uuid.uuid4())
            keys = plan_keys([(placeholder, 512)], 2, 256)
            reservation = Etsi014Reservation(str(uuid.uuid4()), "sae-s", ("sae-d",), 256, keys)
            key_ids = [key.key_id for key in keys]

            source, seen = net.service("S"), []
            finish = source._finish_waiter

            def crash_on_done(relay_id, delivered, reason):      # DONE came: the source dies before serving
                if delivered and not seen:
                    seen.append(relay_id)
                    net.crash("S")
                    return
                finish(relay_id, delivered, reason)
            source._finish_waiter = crash_on_done
            net["S"].call_soon(lambda: source.request_key("D", 512, path=["S", "R", "D"],
                                                          note=encode_reserve(reservation)))
            await net["S"].stopped.wait()
            (relay_id,) = seen
            # the destination kept the key for the KME and recorded the reservation with it
            assert state_of(net["D"].store, RELAY_LINK_ID, relay_id) is not None
            assert set(kme.ledger.lookup(key_ids)) == set(key_ids)

            await net.start("S", nursery)                      # its journal rolls the request back at D
            await net.wait_for("the source's journal to settle",
                               lambda: not net.service("S").journal.open_requests())
            assert state_of(net["D"].store, RELAY_LINK_ID, relay_id) in (None, KeyState.EXPIRED)     # erased
            assert kme.ledger.lookup(key_ids) == {}
            with net["D"].store.database.lock:
                rows = net["D"].store.database.connection.execute("SELECT COUNT(*) FROM etsi014_keys").fetchone()
            assert rows == (0,)                                # no record leaks
            # dec_keys answers as for key ids never recorded: same message, same details shape
            unknown = str(uuid.uuid4())
            message, details = await refusal_of(kme, key_ids[:1])
            unknown_message, unknown_details = await refusal_of(kme, [unknown])
            assert message == unknown_message and details == [{"key_ID": key_ids[0]}] \
                and unknown_details == [{"key_ID": unknown}]
            assert net.unmatched_link_keys() == {}
            nursery.cancel_scope.cancel()
    trio.run(main)


def master_kme(node, part_bits: int) -> KmeService:
    """The master's KME at the source, reaching kme-d on node D through the relay, parts of `part_bits`."""
    config = Etsi014Config(kme_id="kme-s", saes=(SaeConfig("sae-s", "kme-s"), SaeConfig("sae-d", "kme-d")),
                           peers=(PeerKmeConfig("kme-d", node="D"),))
    kme = KmeService(config, node.store, Ledger(database=node.store.database), relay_part_bits=part_bits)
    kme.relay = node.service
    return kme


def run_pair(tmp_path, main, *, part_bits: int = 512):
    """S - R - D with the master's KME at S and the slave's at D; `main(net, master, slave)`."""
    async def wrapper():
        net = SocketNet(tmp_path, *CHAIN)
        kmes = {}
        async with trio.open_nursery() as nursery:
            await net.start("S", nursery, before_run=lambda node: kmes.setdefault("S", master_kme(node, part_bits)))
            await net.start("R", nursery)
            await net.start("D", nursery, before_run=lambda node: kmes.setdefault("D", slave_kme(node)))
            for kme in kmes.values():
                nursery.start_soon(kme.run)
            await net.wait_route("S", "D", hops=2)
            await main(net, kmes["S"], kmes["D"])
            nursery.cancel_scope.cancel()
    trio.run(wrapper)


def test_relay_etsi014_get_key_above_one_relay_request_goes_in_parts(tmp_path):
    """5 keys of 256 bits with parts of 512 bits: three relay requests; the slave SAE gets every key, once."""
    async def main(net, master, slave):
        keys = await master.get_keys("sae-s", "sae-d", KeyRequest(5, 256, ()))
        assert len(keys) == 5 and len({key_id for key_id, _ in keys}) == 5
        assert net["S"].metric("qkd_relay_requests_total", result="delivered") == 3
        fetched = await slave.keys_by_id("sae-d", "sae-s", [key_id for key_id, _ in keys])
        assert dict(fetched) == dict(keys)
        assert not net.service("S").journal.open_requests()        # served: nothing left to settle
    run_pair(tmp_path, main)


def test_relay_etsi014_get_key_whose_later_part_fails_rolls_back_the_parts_before(tmp_path):
    """The slave's KME refuses the third part: Get key answers 503, and the two parts it had recorded are
    rolled back at the slave's node, reservations with them, so none of their keys can be fetched there."""
    async def main(net, master, slave):
        recorded: list[str] = []
        record = slave.record_relayed

        def refusing_the_third(source, link_id, stored_key_id, note):
            if len(recorded) >= 2:
                raise ValueError("this KME refuses the third part")
            record(source, link_id, stored_key_id, note)
            recorded.append(stored_key_id)
        net.service("D").note_handler = refusing_the_third
        with pytest.raises(KeysUnavailable):
            await master.get_keys("sae-s", "sae-d", KeyRequest(5, 256, ()))
        assert len(recorded) == 2
        await net.wait_for("the two parts to be rolled back", lambda: not net.service("S").journal.open_requests())
        for relay_id in recorded:
            assert state_of(net["D"].store, RELAY_LINK_ID, relay_id) in (None, KeyState.EXPIRED)
        with net["D"].store.database.lock:
            rows = net["D"].store.database.connection.execute("SELECT COUNT(*) FROM etsi014_keys").fetchone()
        assert rows == (0,)
        assert net.unmatched_link_keys() == {}
    run_pair(tmp_path, main)

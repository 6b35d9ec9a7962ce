"""An ETSI 014 key relayed to a slave's KME on a non-adjacent node and then rolled back by its source (the
source died after DONE, before serving it): the rollback withdraws the slave KME's reservation with the key,
in the same transaction, so Get key with key IDs answers for its keys exactly as for keys never recorded,
and no ledger record is left behind. Real relay service objects over real TCP/TLS sessions, a real SQLite
key store file per node and the real KME and ledger at the destination (tests/relay_sockets.py)."""
from __future__ import annotations

import uuid

import pytest
import trio

from qkdd.keystore import KeyState
from qkdd.kme.config import Etsi014Config, PeerKmeConfig, SaeConfig
from qkdd.kme.container import plan_keys
from qkdd.kme.errors import BadRequest
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

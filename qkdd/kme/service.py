"""The KME of one qkdd: Get status, Get key (master's end) and Get key with key IDs (slave's end) of
ETSI GS QKD 014 over the daemon's key store, the reservation ledger and each link's classical channel.

Get key takes stored keys of the link (only from this end's allocatable share, so the two ends never
hand out the same stored key; reserved and erased in the key store a block at a time, taken_keys.py),
cuts the requested keys out of them, has the slave's KME record the reservation (the link's reservation
service, qkdd.reservation, purpose ETSI014) and only after its ACCEPT answers; refused or unconfirmed
keys are dropped, never reused. The slave's KME keeps the stored keys reserved until each named slave SAE
has fetched the keys once, then erases them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import time

import trio

from qkdd.keystore import KeyStore, KeyStoreError, KeyUnavailable
from qkdd.keystore.housekeeping import HOUSEKEEPING_INTERVAL_S
from qkdd.keystore.model import IllegalTransition, KeyAlreadyDelivered, KeyNotFound, KeyState, StoreWriteError
from qkdd.kme.config import Etsi014Config
from qkdd.kme.container import assemble, plan_keys, time_ordered_uuid
from qkdd.kme.errors import BadRequest, KeysUnavailable, Unauthorized
from qkdd.kme.group_commit import GroupCommitter
from qkdd.kme.identity import SaeRegistry
from qkdd.kme.key_request import KEYS_NOT_FOUND, KeyRequest
from qkdd.kme.ledger import DELIVERED_GRACE_S, AlreadyDelivered, Ledger, LedgerError
from qkdd.kme.taken_keys import TakenKeys
from qkdd.metrics import Metrics
from qkdd.reservation.protocol import (Etsi014Reservation, Purpose, RefuseReason, ReservedKey, Segment,
                                       encode_reserve)
from qkdd.reservation.protocol import Answer
from qkdd.reservation.service import ReservationService

log = logging.getLogger("qkdd.etsi014")

HOLDER_PREFIX = "etsi014:"
RELAY_METRICS_LINK = "relay"     # the link label of keys for KMEs reached through the relay network
# Stored key bits the master's end takes out of the key store at once (64 stored keys of 256 bits). Its
# pool holds one to two blocks (the next is fetched once it holds less than one, so that a burst of
# requests finds keys in memory); at most two blocks are lost, never reused, when the daemon stops or
# crashes (taken_keys.py).
TAKE_BLOCK_BITS = 64 * 256


# What the master's SAE learns of a refusal: the reason, in fixed words. The peer's own text (which may name
# stored keys) goes to this daemon's log only.
_REFUSED_BECAUSE = {
    RefuseReason.KEYS_UNAVAILABLE: "the stored keys are not available there",
    RefuseReason.UNKNOWN_SAE: "it does not serve the SAEs named",
    RefuseReason.STORE_FAILURE: "it could not record the reservation",
    RefuseReason.MALFORMED: "it could not read the reservation",
}


def _unavailable(detail: str) -> KeysUnavailable:
    return KeysUnavailable(detail)


class KmeService:
    def __init__(self, config: Etsi014Config, keystore: KeyStore, ledger: Ledger, *,
                 take_block_bits: int = TAKE_BLOCK_BITS, clock=time.time, metrics: Metrics | None = None,
                 relay_part_bits: int | None = None) -> None:
        self.config = config
        self.registry = SaeRegistry(config)
        self.keystore = keystore
        self.ledger = ledger
        self._links: dict[str, ReservationService] = {}   # link -> its reservation service (attach)
        self._store = GroupCommitter(self._open_batch)            # slave's end: key store and ledger
        self._takes = GroupCommitter(self.keystore.batch)         # master's end: the key store only
        self._taken = {peer.link_id: TakenKeys() for peer in config.peers if peer.link_id}
        self._refills = {peer.link_id: trio.Lock() for peer in config.peers if peer.link_id}
        self.relay = None        # qkdd.relay.service.RelayService: keys for KMEs on non-adjacent nodes
        self._take_block_bits = take_block_bits
        # key of one relay request (the relay's MAX_BITS): a Get key across the network asking more is relayed
        # in parts, served only once every part is confirmed (the others rolled back otherwise)
        self._relay_part_bits = relay_part_bits
        self._nursery: trio.Nursery | None = None        # run()'s, for refills ahead of need
        self._refilling_ahead: set[str] = set()           # links with such a refill under way
        self._clock = clock
        self._metrics = metrics if metrics is not None else Metrics()    # (tests: a registry of their own)
        for peer in config.peers:
            self._metrics.kme_link(peer.link_id or RELAY_METRICS_LINK)   # every series at zero from the first scrape

    def _open_batch(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(self.keystore.batch())
        stack.enter_context(self.ledger.batch())
        return stack

    async def run(self) -> None:
        """The service's own tasks (group commit of store writes, ledger housekeeping); runs in the
        daemon's nursery."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._store.run)
            nursery.start_soon(self._takes.run)
            nursery.start_soon(self._housekeeping)

    def attach(self, link_id: str, reservations: ReservationService) -> None:
        """Serve the ETSI 014 reservations of the peer KME behind `link_id` over that link's reservation
        service (qkdd.reservation), which carries them on the link's one classical channel."""
        self._links[link_id] = reservations
        reservations.add_purpose(Purpose.ETSI014, self)

    def attached(self, link_id: str) -> bool:
        return link_id in self._links

    async def _housekeeping(self) -> None:
        """Every HOUSEKEEPING_INTERVAL_S, the ledger forgets what no one needs any more (`purge_ledger`)."""
        while True:
            await trio.sleep(HOUSEKEEPING_INTERVAL_S)
            try:
                delivered, undeliverable = await self._store.call(self.purge_ledger)
            except (KeyStoreError, LedgerError, sqlite3.Error) as exc:
                log.warning("ETSI 014 ledger housekeeping failed: %s", exc)
            else:
                if delivered or undeliverable:
                    log.info("ETSI 014 ledger housekeeping", extra={"delivered_keys_purged": delivered,
                                                                    "undeliverable_keys_purged": undeliverable})

    def purge_ledger(self, now: float | None = None) -> tuple[int, int]:
        """Blocking. Forget fully delivered keys past DELIVERED_GRACE_S, and keys still waiting for a
        recipient, recorded more than DELIVERED_GRACE_S ago, one of whose stored keys the key store no
        longer holds reserved (expired there: no recipient can get them any more). Returns (delivered,
        undeliverable) keys forgotten."""
        now = self._clock() if now is None else now
        delivered = self.ledger.purge_delivered(now)
        undeliverable = [key_id for key_id, link_id, stored_ids
                         in self.ledger.waiting_keys(created_before=now - DELIVERED_GRACE_S)
                         if not all(self._still_reserved(link_id, stored_id) for stored_id in stored_ids)]
        if undeliverable:
            self.ledger.forget(undeliverable)
        return delivered, len(undeliverable)

    def _still_reserved(self, link_id: str, stored_key_id: str) -> bool:
        try:
            return self.keystore.state(link_id, stored_key_id) is KeyState.RESERVED
        except KeyNotFound:
            return False

    # -- the slave's end of the reservation exchange ----------------------------------------------------
    async def on_reservations(self, link_id: str, reservations: list[Etsi014Reservation]) -> list[Answer]:
        """Record the reservations of one payload from the peer KME durably (one group commit), each all
        or nothing: accepted, or refused with nothing of it recorded."""
        peer_kme = next(peer.kme_id for peer in self.config.peers if peer.link_id == link_id)
        answers: dict[str, Answer] = {}
        valid = []
        for reservation in reservations:
            if not all(self.registry.serves(sae_id) for sae_id in reservation.slave_sae_ids):
                answers[reservation.request_id] = Answer(reservation.request_id, RefuseReason.UNKNOWN_SAE,
                                                         "a slave SAE is not served here")
            elif self.registry.kme_of(reservation.master_sae_id) != peer_kme:
                answers[reservation.request_id] = Answer(reservation.request_id, RefuseReason.UNKNOWN_SAE,
                                                         "the master SAE is not served by the peer KME")
            else:
                valid.append(reservation)
        if valid:
            try:
                errors = await self._store.call(self._store_reservations, link_id, valid)
            except (KeyStoreError, LedgerError, sqlite3.Error) as exc:   # the commit failed: nothing is recorded
                errors = [exc] * len(valid)
            for reservation, error in zip(valid, errors):
                if error is None:
                    answer = Answer(reservation.request_id)
                elif isinstance(error, (LedgerError, sqlite3.Error, StoreWriteError)):
                    answer = Answer(reservation.request_id, RefuseReason.STORE_FAILURE, str(error))
                else:
                    answer = Answer(reservation.request_id, RefuseReason.KEYS_UNAVAILABLE, str(error))
                answers[reservation.request_id] = answer
        return [answers[reservation.request_id] for reservation in reservations]      # in the order they came

    def _store_reservations(self, link_id: str, reservations: list[Etsi014Reservation]) -> list[Exception | None]:
        """Reserve each reservation's stored keys and record it in the ledger, each all or nothing (a
        savepoint of the group's transaction); the error of each one that failed, else None."""
        errors: list[Exception | None] = []
        for reservation in reservations:
            try:
                with self.keystore.batch():
                    self._store_reservation(link_id, reservation)
                errors.append(None)
            except (KeyStoreError, LedgerError, sqlite3.Error) as exc:
                errors.append(exc)
        return errors

    def _store_reservation(self, link_id: str, reservation: Etsi014Reservation) -> None:
        stored_ids, holder = reservation.stored_key_ids(), HOLDER_PREFIX + reservation.request_id
        try:
            stored_bits = self.keystore.reserve_ids(link_id, stored_ids, holder, peer_share_only=True)
        except IllegalTransition as exc:
            if exc.current is not KeyState.PENDING:
                raise
            # On a live link Alice commits a frame before she tells Bob to: the master's KME took these
            # keys, so their frame committed there and Bob's COMMIT is on its way. Promote them here as the
            # key stores' resynchronisation would (qkdd.keystore.resync: pending vs delivered).
            self.keystore.apply_resync(link_id, stored_ids, [], [])
            stored_bits = self.keystore.reserve_ids(link_id, stored_ids, holder, peer_share_only=True)
        _check_segments_fit(reservation, stored_bits)
        self.ledger.record(link_id, reservation)

    # -- Get status ----------------------------------------------------------------------------------------
    async def status(self, master_sae_id: str, slave_sae_id: str) -> dict:
        route = self.registry.route_to(slave_sae_id)
        if route.node:                  # the stock of the route the relay network would take now
            routes = self.relay.routes(route.node, count=1) if self.relay is not None else []
            available_bits = routes[0].stock_bits if routes else 0
        else:
            available_bits = await trio.to_thread.run_sync(self.keystore.available_bits, route.link_id)
            available_bits += self._taken[route.link_id].bits(self._clock())
        config = self.config
        return {
            "source_KME_ID": config.kme_id,
            "target_KME_ID": route.peer_kme_id,
            "master_SAE_ID": master_sae_id,
            "slave_SAE_ID": slave_sae_id,
            "key_size": config.key_size_bits,
            "stored_key_count": min(available_bits // config.key_size_bits, config.max_key_count),
            "max_key_count": config.max_key_count,
            "max_key_per_request": config.max_key_per_request,
            "max_key_size": config.max_key_size_bits,
            "min_key_size": config.min_key_size_bits,
            "max_SAE_ID_count": config.max_sae_id_count,
        }

    # -- Get key (master's end) -------------------------------------------------------------------------
    async def get_keys(self, master_sae_id: str, slave_sae_id: str, request: KeyRequest) -> list[tuple[str, bytes]]:
        route = self.registry.route_to(slave_sae_id)
        if route.node:
            return await self._get_keys_relayed(master_sae_id, slave_sae_id, request, route.node)
        link_id = route.link_id
        request_id = time_ordered_uuid()
        metrics = self._metrics.kme_link(link_id)
        service = self._links.get(link_id)
        if service is None or not service.connected:   # checked again below; this spares keys while it is away
            metrics.unavailable("peer_unreachable")
            raise _unavailable("the slave SAE's KME is not reachable")
        try:
            # This end's copies, already reserved and erased in the key store: from here on they exist
            # only in memory, and are lost rather than reused if the peer refuses.
            materials = await self._take_keys(link_id, request.number * request.size_bits)
        except KeyUnavailable:
            metrics.unavailable("no_key")
            raise _unavailable("not enough key material stored for this slave SAE") from None
        stored = [(stored_id, len(material) * 8) for stored_id, material in materials.items()]
        keys = plan_keys(stored, request.number, request.size_bits)
        reservation = Etsi014Reservation(request_id, master_sae_id,
                                         (slave_sae_id, *request.additional_slave_sae_ids), request.size_bits, keys)
        if not service.connected:
            metrics.unavailable("peer_unreachable")
            raise _unavailable("the slave SAE's KME is not reachable")
        sent = trio.current_time()
        try:
            outcome = await service.request(reservation, self.config.reservation_timeout_s)
        except ValueError as exc:
            # Stored keys too short to describe the request in one RESERVE (on a link they hold 64 bits or
            # more, and the config caps a request at 1 MiB of key, so this takes a device with tiny keys).
            log.error("link %s: a Get key of %d keys of %d bits cannot be reserved in one message: %s",
                      link_id, request.number, request.size_bits, exc)
            metrics.unavailable("no_key")
            raise _unavailable("the stored keys are too fragmented to reserve this many at once; "
                               "ask for fewer or larger keys") from None
        if outcome.status == "refused":
            metrics.unavailable("peer_refused")
            raise _unavailable("the slave SAE's KME refused the reservation: "
                               + _REFUSED_BECAUSE.get(outcome.reason, "it refused"))
        if outcome.status == "lost":               # the peer may have recorded it
            metrics.unavailable("peer_timeout")
            raise _unavailable("the session with the slave SAE's KME ended")
        if not outcome.accepted:
            metrics.unavailable("peer_timeout")
            raise _unavailable("the slave SAE's KME did not confirm the reservation in time")
        metrics.reservation_confirmed(trio.current_time() - sent)
        metrics.keys_handed("master", len(keys))
        await self._audit(link_id, [(key.key_id, request.size_bits) for key in keys], master_sae_id)
        return [(key.key_id, assemble(key, materials)) for key in keys]

    async def _get_keys_relayed(self, master_sae_id: str, slave_sae_id: str, request: KeyRequest,
                                node: str) -> list[tuple[str, bytes]]:
        """Get key for a slave SAE whose KME is on a non-adjacent node: keys of number x size bits are relayed
        there (qkdd.relay), each relayed key carrying the reservation (key ids, SAEs) of the keys cut from it,
        which the slave's KME records in the same transaction as the relayed key, before the end-to-end
        confirmation lets this end answer. A request above one relay request's bits goes in parts, held
        (not served) until every part is confirmed; if one fails, the parts confirmed before are rolled back
        at the slave's node, reservation and all, as a failed relay request is."""
        from qkdd.relay.protocol import MAX_BITS
        from qkdd.relay.service import RelayError
        metrics = self._metrics.kme_link(RELAY_METRICS_LINK)
        if self.relay is None:
            metrics.unavailable("peer_unreachable")
            raise _unavailable("this KME's daemon is not a relay node")
        size = request.size_bits
        per_part = (self._relay_part_bits or MAX_BITS) // size
        if per_part < 1:
            metrics.unavailable("no_key")
            raise _unavailable(f"keys of more than {self._relay_part_bits or MAX_BITS} bits cannot be relayed "
                               "across the network")
        parts = [min(per_part, request.number - start) for start in range(0, request.number, per_part)]
        hold = len(parts) > 1
        held: list[str] = []
        keys_out: list[tuple[str, bytes]] = []
        sent = trio.current_time()
        try:
            for number in parts:
                placeholder = time_ordered_uuid()     # the stored key's id at the slave's end is the relay's
                keys = plan_keys([(placeholder, number * size)], number, size)
                reservation = Etsi014Reservation(time_ordered_uuid(), master_sae_id,
                                                 (slave_sae_id, *request.additional_slave_sae_ids), size, keys)
                relay_id, material, _ = await self.relay.request_key(node, number * size,
                                                                     note=encode_reserve(reservation), hold=hold)
                if hold:
                    held.append(relay_id)
                keys_out += [(key.key_id, assemble(key, {placeholder: material})) for key in keys]
            if hold:
                await self.relay.serve_held(held)
                held = []
        except RelayError as exc:
            log.warning("ETSI 014: keys for %s could not be relayed to node %s: %s", slave_sae_id, node, exc)
            metrics.unavailable("peer_unreachable")
            raise _unavailable("the slave SAE's KME could not be reached through the relay network") from None
        finally:
            if held:                    # not served: the parts confirmed so far are rolled back
                self.relay.abandon_held(held)
        metrics.reservation_confirmed(trio.current_time() - sent)
        metrics.keys_handed("master", len(keys_out))
        return keys_out

    def record_relayed(self, source_node: str, link_id: str, stored_key_id: str, note: bytes) -> None:
        """Blocking (in the relay's key-store transaction): record the ETSI 014 reservation a relayed key
        carries, its keys cut from stored key `stored_key_id`; raises (KeyStoreError, LedgerError,
        ValueError) to refuse it, and then the relay aborts."""
        from qkdd.reservation.protocol import ReservationEndpoint, ReservationProtocolError, ReservationReceived
        try:
            events = ReservationEndpoint().receive(note)
        except ReservationProtocolError as exc:
            raise ValueError(f"the relayed reservation cannot be read: {exc}") from None
        if len(events) != 1 or not isinstance(events[0], ReservationReceived) \
                or not isinstance(events[0].reservation, Etsi014Reservation):
            raise ValueError("the relayed note is not one ETSI 014 reservation")
        reservation = events[0].reservation
        peer = next((p for p in self.config.peers if p.node == source_node), None)
        if peer is None or self.registry.kme_of(reservation.master_sae_id) != peer.kme_id:
            raise ValueError("the master SAE is not served by the KME of the relay's source node")
        if not all(self.registry.serves(sae_id) for sae_id in reservation.slave_sae_ids):
            raise ValueError("a slave SAE is not served here")
        keys = tuple(ReservedKey(key.key_id, tuple(Segment(stored_key_id, s.offset_bytes, s.length_bytes)
                                                   for s in key.segments)) for key in reservation.keys)
        with self.keystore.batch():
            self._store_reservation(link_id, dataclasses.replace(reservation, keys=keys))

    def forget_relayed(self, link_id: str, stored_key_id: str) -> None:
        """Blocking (in the relay's key-store transaction that erases a relayed key its source rolled back):
        the reservation recorded with it goes too, so Get key with key IDs answers for its keys as for keys
        never recorded, and no record is left waiting for a key that is gone."""
        try:
            forgotten = self.ledger.forget_stored(link_id, stored_key_id)
        except LedgerError as exc:          # the relay's contract: it keeps the key and is asked again
            raise StoreWriteError(str(exc)) from None
        if forgotten:
            log.info("ETSI 014: %d key(s) relayed to this KME were rolled back by their source; their "
                     "reservation is withdrawn", len(forgotten))

    async def _take_keys(self, link_id: str, bits: int) -> dict[str, bytes]:
        """Stored keys holding at least `bits` from this end's share, out of the link's pool of taken
        keys, refilled from the key store a block at a time (one transaction): ahead of need, once the
        pool holds less than a block, so requests rarely wait for a refill. KeyUnavailable if the key
        store and the pool together hold too few."""
        pool = self._taken[link_id]
        taken = pool.take(bits, self._clock())
        if taken is None:
            async with self._refills[link_id]:      # one refill at a time; the others then use its block
                taken = pool.take(bits, self._clock())
                if taken is None:
                    await self._refill(link_id, bits - pool.bits(self._clock()))
                    taken = pool.take(bits, self._clock())
            if taken is None:      # the fresh block expired on the way (clock jumps): no keys for now
                raise KeyUnavailable(f"link {link_id}: the stored keys taken have expired")
        if self._nursery is not None and link_id not in self._refilling_ahead and self._pool_low(link_id):
            self._refilling_ahead.add(link_id)
            self._nursery.start_soon(self._refill_ahead, link_id)
        return taken

    def _pool_low(self, link_id: str) -> bool:
        """Less than a block left: time to fetch the next one (50 clients' requests taken in one
        scheduler pass emptied a pool refilled at half a block, and waited for the refill)."""
        return self._taken[link_id].bits(self._clock()) < self._take_block_bits

    async def _refill(self, link_id: str, min_bits: int) -> None:
        """KeyUnavailable too when the key store cannot take keys now (a full disk, an I/O error)."""
        try:
            block = await self._takes.call(self._take_block, link_id, min_bits)
        except KeyUnavailable:
            raise
        except (KeyStoreError, sqlite3.Error) as exc:
            log.warning("link %s: the key store could not take keys for ETSI 014: %s", link_id, exc)
            raise KeyUnavailable(f"link {link_id}: the key store cannot take keys now") from None
        self._taken[link_id].add(block)

    async def _refill_ahead(self, link_id: str) -> None:
        """A block into the pool before it runs dry; a store without enough keys leaves it as it is (the
        request that then finds the pool short gets the 503)."""
        try:
            async with self._refills[link_id]:
                if self._pool_low(link_id):
                    with contextlib.suppress(KeyStoreError):
                        await self._refill(link_id, 1)
        finally:
            self._refilling_ahead.discard(link_id)

    def _take_block(self, link_id: str, min_bits: int) -> list[tuple[str, bytes, float]]:
        """Deliver and erase stored keys from this end's share, a block (or at least `min_bits`), returning
        (id, material, expires_at) in age order (in a group-commit batch: one transaction, all or nothing)."""
        keys = self.keystore.take_bits(link_id, min_bits, self._take_block_bits)
        return [(key.key_id, key.material, key.expires_at) for key in keys]

    # -- Get key with key IDs (slave's end) -------------------------------------------------------------
    async def keys_by_id(self, slave_sae_id: str, master_sae_id: str, key_ids: list[str]) -> list[tuple[str, bytes]]:
        entries = await trio.to_thread.run_sync(self.ledger.lookup, key_ids)
        missing = [key_id for key_id in key_ids
                   if key_id not in entries or entries[key_id].master_sae_id != master_sae_id]
        if missing:
            raise BadRequest(KEYS_NOT_FOUND, [{"key_ID": key_id} for key_id in missing])
        if any(slave_sae_id not in entries[key_id].recipients for key_id in key_ids):
            raise Unauthorized("one or more keys were not requested for this SAE")
        delivered = [key_id for key_id in key_ids if entries[key_id].recipients[slave_sae_id] is not None]
        if delivered:
            raise BadRequest(KEYS_NOT_FOUND, [{"key_ID": key_id, "reason": "delivered before"}
                                              for key_id in delivered])
        try:
            keys = await self._store.call(self._deliver_to_slave, slave_sae_id, key_ids, entries)
        except (StoreWriteError, LedgerError, sqlite3.Error) as exc:      # nothing delivered: ask again later
            log.warning("ETSI 014: keys could not be delivered to %s: %s", slave_sae_id, exc)
            raise _unavailable("the key store cannot record the delivery now") from None
        except (KeyStoreError, AlreadyDelivered):
            raise BadRequest(KEYS_NOT_FOUND, [{"reason": "expired or delivered before"}]) from None
        for key_id in key_ids:
            self._metrics.kme_link(entries[key_id].link_id).keys_handed("slave", 1)
        for link_id in {entries[key_id].link_id for key_id in key_ids}:
            await self._audit(link_id, [(key_id, entries[key_id].size_bits) for key_id in key_ids
                                        if entries[key_id].link_id == link_id], slave_sae_id)
        return keys

    async def _audit(self, link_id: str, keys: list[tuple[str, int]], sae_id: str) -> None:
        """The key store's audit trail, if any, records ETSI 014 keys handed to an SAE (ids and sizes)."""
        trail = getattr(self.keystore, "audit", None)
        if trail is not None:
            await trio.to_thread.run_sync(lambda: trail.event("delivered", link_id, keys, holder=f"sae:{sae_id}",
                                                              detail="ETSI 014 key ids"))

    def _deliver_to_slave(self, slave_sae_id: str, key_ids: list[str], entries) -> list[tuple[str, bytes]]:
        materials: dict[str, bytes] = {}
        for key_id in key_ids:
            entry = entries[key_id]
            for segment in entry.key.segments:
                if segment.stored_key_id not in materials:
                    materials[segment.stored_key_id] = self.keystore.peek(entry.link_id, segment.stored_key_id).material
        keys = [(key_id, assemble(entries[key_id].key, materials)) for key_id in key_ids]
        self._erase(self.ledger.mark_delivered(key_ids, slave_sae_id))
        return keys

    def erase_spent(self) -> int:
        """Erase the stored keys whose every key reached every slave that a crash left in the key store
        (start-up; with the ledger in the key store's file there are none). Blocking; how many."""
        return self._erase(self.ledger.spent_stored_keys())

    def _erase(self, spent: list[tuple[str, str]]) -> int:
        erased = 0
        for link_id, stored_id in spent:
            try:
                self.keystore.deliver(link_id, stored_id)
                erased += 1
            except (KeyAlreadyDelivered, KeyNotFound):
                pass                                 # erased before
        return erased


def _check_segments_fit(reservation: Etsi014Reservation, stored_bits: dict[str, int]) -> None:
    """KeyUnavailable if a segment reads past the end of its stored key (`stored_bits`: id -> length):
    such a key could never be assembled for the slave SAE."""
    for key in reservation.keys:
        for segment in key.segments:
            bits = stored_bits[segment.stored_key_id]
            if (segment.offset_bytes + segment.length_bytes) * 8 > bits:
                raise KeyUnavailable(f"stored key {segment.stored_key_id} holds {bits} bits; key {key.key_id} "
                                     f"reads to byte {segment.offset_bytes + segment.length_bytes}")

"""The relay network's I/O side: one RelayService per daemon, registered as two channel kinds on every
relay link's LinkChannel (link-state announcements and relay messages); it floods announcements, keeps
the topology, takes and erases the link keys each hop uses, and answers /v1/relay requests.

Link keys: a sender takes keys of its own (allocatable) share of the link and erases them before its FORWARD
leaves; the receiver takes the same keys by id, only from the sender's share, and erases them. The FORWARD
is thereby the reservation both ends record (a key named twice is gone the second time). The destination
keeps a confirmed key in the key store (link id RELAY_LINK_ID, sealed like every key) until its consumer
fetches it once with GET /v1/keys/{key_id}.

In-flight state across a restart: the source records each request (journal.py) in the transaction that
takes its first keys and deletes the record just before it serves the key; a record left when no request
runs (it failed, or the node was killed) is rolled back at the destination (protocol.py, "Settlement"),
every SETTLE_INTERVAL_S over a current route until the destination answers. A relay keeps nothing: the
keys it takes are erased in the transaction that takes them.
"""
from __future__ import annotations

import functools
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import trio
import trio.lowlevel

from qkdd.keystore import KeyNotFound, KeyState, KeyStoreError, KeyUnavailable, StoredKey
from qkdd.link_channel import LINKSTATE_CHANNEL, RELAY_CHANNEL, LinkChannel
from qkdd.log_limit import RateLimitedLog
from qkdd.peer import MuxStream, SessionClosedError, key_fingerprint
from qkdd.relay import protocol as rp
from qkdd.relay.flood_limit import FloodLimiter
from qkdd.relay.hop_keys import StoreBatches, erase_sent_keys, take_hop_keys
from qkdd.relay.journal import RelayJournal
from qkdd.relay.linkstate import Announcement, LinkReport, LinkStateDatabase
from qkdd.relay.routing import (Route, Topology, alternative_routes, build_topology, disjoint_routes, route_along,
                                shortest_route)

log = logging.getLogger("qkdd.relay")

RELAY_LINK_ID = "relay"          # the key store's link id of relayed keys held for their consumer
ATTEMPTS = 2                     # routes tried per request (the second on the topology the failure left,
                                 # another route than the first when there is one)
ALTERNATIVES = 4                 # routes looked at for one that avoids the paths a request failed on
RETRY_WAIT_S = 1.0
MAX_SHARE_GROUPS = 4096          # multi-path keys whose shares the destination holds while the others travel
SETTLE_INTERVAL_S = 1.0          # unsettled requests of the journal: a ROLLBACK each this often until answered
FORGET_INTERVAL_S = 10.0         # confirmed hops leave the journal this often (or at FORGET_BATCH of them)
FORGET_BATCH = 1024
REMEMBERED_ROLLBACKS = 4096      # key ids the destination was told to roll back (a late store of one is refused)


class RelayError(Exception):
    """A relay request that cannot be served; `status` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 503) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RelaySettings:
    node_id: str
    trust_level: int = 0
    hop_limit: int = 8
    min_trust: int = 0
    announce_interval_s: float = 10.0
    max_age_s: float = 60.0
    request_timeout_s: float = 10.0
    key_expiry_s: float = 3600.0
    max_announcements_per_s: float = 1.0     # of one origin, accepted by every node (flood_limit.py)


class _Waiter:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.reason = ""
        self.delivered = False


class RelayService:
    def __init__(self, settings: RelaySettings, signing_key, channels: dict[str, LinkChannel], store,
                 *, rates: Callable[[str], tuple[float, float]] | None = None, metrics=None) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self._signing_key = signing_key
        self.public_key = signing_key.public_key().public_bytes_raw()
        self.store = store
        self.metrics = metrics
        self._rates = rates or (lambda link_id: (0.0, math.nan))
        self.db = LinkStateDatabase(self.node_id, self.public_key, max_age_s=settings.max_age_s,
                                    limiter=FloodLimiter(settings.max_announcements_per_s))
        # our own originations: less than our neighbours accept (flood_limit.py)
        self._own_rate = self.db.limiter.own_bucket(0.0)
        self.endpoint = rp.RelayEndpoint(self.node_id, self.db.neighbor_on, deadline_s=settings.request_timeout_s,
                                         sign=lambda body: signing_key.sign(body, rp.SETTLE_SIGNATURE_CONTEXT),
                                         identity_of=self._identity_of)
        self._links = sorted(channels)
        self._ls_out: dict[str, trio.MemorySendChannel] = {}
        self._relay_out: dict[str, trio.MemorySendChannel] = {}
        self._waiters: dict[str, _Waiter] = {}
        self._held: set[str] = set()        # confirmed keys relayed with `hold`, not served yet (serve_held)
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._peer_log = RateLimitedLog(log)
        self._store = StoreBatches(store)
        self._shares: dict[str, tuple[float, dict[str, bytearray]]] = {}   # multi-path group -> shares so far
        self.journal = RelayJournal(store.database)
        self._settle_now = trio.Event()
        self._rolled_back: dict[str, None] = {}      # key ids rolled back here (bounded, oldest out)
        self._confirmed: set[tuple[str, str]] = set()   # (relay id, link id) of hops the next node took
        self._taking: set[str] = set()                  # relay ids whose hop keys are being taken here
        # the journal may hold something to settle (at start, and after any request ended without DONE)
        self._unsettled = True
        self._forgotten_at = 0.0
        # (source node, key-store link id, stored key id, note) -> None; raises to refuse (the ETSI 014 KME)
        self.note_handler: Callable[[str, str, str, bytes], None] | None = None
        # (key-store link id, stored key id) -> None: a key stored with a note is rolled back, and whatever
        # the note's consumer recorded for it goes in the same transaction (the ETSI 014 KME's reservation);
        # raises KeyStoreError when it cannot (nothing is erased, the source asks again)
        self.rollback_handler: Callable[[str, str], None] | None = None
        for link_id, channel in channels.items():
            self.db.pin(link_id, key_fingerprint(channel.pinned_peer_key))
            channel.register(LINKSTATE_CHANNEL, lambda stream, link_id=link_id: self._serve_linkstate(link_id, stream))
            channel.register(RELAY_CHANNEL, lambda stream, link_id=link_id: self._serve_relay(link_id, stream))

    def _identity_of(self, node_id: str) -> bytes | None:
        """A node's raw ML-DSA-65 public key, as its accepted link-state announcement carries it."""
        held = self.db.held.get(node_id)
        return held.announcement.public_key if held is not None else None

    # -- lifetime --------------------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._peer_log.run)
            nursery.start_soon(self._store.run)
            nursery.start_soon(self._settle)
            self._own_rate.updated_s = trio.current_time()
            await self._originate()
            task_status.started()
            while True:
                with trio.move_on_after(self.settings.announce_interval_s):
                    await self._changed.wait()
                self._changed = trio.Event()
                await trio.sleep(0.05)            # changes close together make one announcement
                await trio.sleep(self._own_rate.wait_s(trio.current_time()))
                self.db.expire(trio.current_time())
                self._send_all(self.endpoint.expire(trio.current_time()))
                await self._originate()

    def _topology_changed(self) -> None:
        self._changed.set()

    async def _originate(self) -> None:
        self._own_rate.take(trio.current_time())
        stock = {}
        for link_id in self._links:
            try:
                stock[link_id] = await trio.to_thread.run_sync(self.store.available_bits, link_id)
            except KeyStoreError:
                stock[link_id] = 0
        reports = []
        for link_id in self._links:
            neighbor = self.db.neighbor_on(link_id)
            if neighbor is None or link_id not in self._ls_out:
                continue
            rate, qber = self._rates(link_id)
            reports.append(LinkReport(neighbor, link_id, self.db.pinned[link_id], stock[link_id], float(rate),
                                      qber if qber is not None else math.nan))
        announcement = Announcement(self.node_id, self.db.next_sequence(time.time()), self.settings.trust_level,
                                    self.public_key, tuple(reports))
        payload = announcement.sign(self._signing_key)
        self.db.originate(announcement, payload, trio.current_time())
        for out in list(self._ls_out.values()):
            out.send_nowait(payload)

    # -- link-state channel ----------------------------------------------------------------------------
    async def _serve_linkstate(self, link_id: str, stream: MuxStream) -> None:
        send, receive = trio.open_memory_channel[bytes](math.inf)
        for payload in self.db.payloads():          # ours first (held under our id), then what we know
            send.send_nowait(payload)
        self._ls_out[link_id] = send
        self._topology_changed()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_write_all, receive, stream)
                try:
                    while True:
                        payload = await stream.receive()
                        self._on_announcement(link_id, payload)
                except SessionClosedError:
                    pass
                nursery.cancel_scope.cancel()
        finally:
            if self._ls_out.get(link_id) is send:
                del self._ls_out[link_id]
            self._topology_changed()

    def _on_announcement(self, link_id: str, payload: bytes) -> None:
        known_neighbor = self.db.neighbor_on(link_id)
        result = self.db.receive(payload, link_id, trio.current_time(), time.time())
        if result.accepted:
            for other, out in list(self._ls_out.items()):
                if other != link_id:
                    for flooded in result.flood:
                        out.send_nowait(flooded)
            if known_neighbor is None and self.db.neighbor_on(link_id) is not None:
                self._topology_changed()         # our own announcement can now name this neighbour
        elif result.refusal not in ("duplicate", "unvouched"):      # flooding echoes and a normal wait
            # an older copy also arrives when floods cross (or a peer replays one): worth a note, not a warning
            level = logging.INFO if result.refusal == "stale" else logging.WARNING
            self._peer_log.log(level, f"linkstate-{result.refusal}", "link %s: refused a link-state "
                               "announcement of %s (%s): %s", link_id, result.origin, result.refusal, result.detail)
        if self.metrics is not None:
            self.metrics.announcement(result.refusal or "accepted")

    # -- topology and routes ---------------------------------------------------------------------------
    def topology(self) -> Topology:
        topology = build_topology(self.db.announcements())
        # our own view of our links is live: drop those whose relay channel is not up
        topology.edges[self.node_id] = [e for e in topology.edges.get(self.node_id, []) if e.link_id in self._relay_out]
        return topology

    def routes(self, dst: str | None = None, *, count: int = 3, min_trust: int | None = None) -> list[Route]:
        topology = self.topology()
        targets = [dst] if dst is not None else sorted(n for n in topology.trust if n != self.node_id)
        routes = []
        for target in targets:
            routes += alternative_routes(topology, self.node_id, target, count, hop_limit=self.settings.hop_limit,
                                      min_trust=self.settings.min_trust if min_trust is None else min_trust)
        return routes

    def choose_route(self, dst: str, bits: int, path: list[str] | None = None,
                     exclude: frozenset[str] = frozenset(), min_trust: int | None = None,
                     failed: frozenset[tuple[str, ...]] = frozenset()) -> Route:
        """The route for a request: the given `path`, else the cheapest within the limits; when that is one of
        the `failed` paths (a retry before the topology shows why it failed: a link whose channel went
        silent stays announced until its session times out), the cheapest alternative that is not."""
        topology = self.topology()
        if dst not in topology.trust:
            raise RelayError(f"node {dst!r} is not known in the relay network", 404)
        if path is not None:
            route = route_along(topology, path, need_bits=bits)
            if route is None:
                raise RelayError("the given route is not a chain of live links with enough key", 409)
            return route
        limits = {"hop_limit": self.settings.hop_limit, "need_bits": bits, "exclude": exclude,
                  "min_trust": self.settings.min_trust if min_trust is None else min_trust}
        route = shortest_route(topology, self.node_id, dst, **limits)
        if route is not None and route.path in failed:
            route = next((r for r in alternative_routes(topology, self.node_id, dst, ALTERNATIVES, **limits)
                          if r.path not in failed), route)
        if route is None:
            raise RelayError(f"no route to {dst} within {self.settings.hop_limit} hops through trusted nodes "
                             "with enough key")
        return route

    # -- requests at the source ------------------------------------------------------------------------
    async def request_key(self, dst: str, bits: int, path: list[str] | None = None,
                          min_trust: int | None = None, paths: int = 1,
                          note: bytes = b"", hold: bool = False) -> tuple[str, bytes, list[Route]]:
        """A key of `bits` bits shared with node `dst`: (key id, key, routes). With `paths` > 1, the XOR of
        shares relayed over that many node-disjoint routes. RelayError otherwise. With `hold`, the key is not
        served yet: its journal row stays until `serve_held` (then it may be served) or `abandon_held` (then it
        is rolled back at the destination, as is every held key after a crash)."""
        if dst == self.node_id:
            raise RelayError("the destination is this node", 400)
        if paths > 1:
            if path is not None or note:
                raise RelayError("give either a route or a number of paths", 400)
            return await self._request_multipath(dst, bits, paths, min_trust)
        if path is not None and (len(path) < 2 or path[0] != self.node_id or path[-1] != dst):
            raise RelayError("route must start at this node and end at dst", 400)
        started = trio.current_time()
        reasons = []
        failed: set[tuple[str, ...]] = set()
        for attempt in range(ATTEMPTS if path is None else 1):
            if attempt:                 # the failure may have changed the topology: give it a moment
                with trio.move_on_after(RETRY_WAIT_S):
                    await self._changed.wait()
            route = self.choose_route(dst, bits, path, frozenset(), min_trust, frozenset(failed))
            try:
                relay_id, key = await self._relay(route, bits, note=note, hold=hold)
            except RelayError as exc:
                failed.add(route.path)
                reasons.append(f"via {'-'.join(route.path)}: {exc}")
                if self.metrics is not None:
                    self.metrics.request("aborted", route.hops, trio.current_time() - started)
                continue
            if self.metrics is not None:
                self.metrics.request("delivered", route.hops, trio.current_time() - started)
            return relay_id, key, [route]
        raise RelayError("the relay did not complete: " + "; ".join(reasons))

    async def _request_multipath(self, dst: str, bits: int, paths: int,
                                 min_trust: int | None) -> tuple[str, bytes, list[Route]]:
        topology = self.topology()
        if dst not in topology.trust:
            raise RelayError(f"node {dst!r} is not known in the relay network", 404)
        routes = disjoint_routes(topology, self.node_id, dst, paths, hop_limit=self.settings.hop_limit,
                                 min_trust=self.settings.min_trust if min_trust is None else min_trust,
                                 need_bits=bits)
        if len(routes) < paths:
            raise RelayError(f"{len(routes)} node-disjoint routes to {dst} with enough key, {paths} asked")
        group = str(uuid.uuid4())
        started = trio.current_time()
        shares: list[bytes | None] = [None] * paths
        failures: list[str] = []

        async def one(index: int, route: Route) -> None:
            try:
                shares[index] = (await self._relay(route, bits, group=group, shares=paths))[1]
            except RelayError as exc:
                failures.append(f"via {'-'.join(route.path)}: {exc}")

        async with trio.open_nursery() as nursery:
            for index, route in enumerate(routes):
                nursery.start_soon(one, index, route)
        if failures or any(share is None for share in shares):
            if self.metrics is not None:
                self.metrics.request("aborted", max(r.hops for r in routes), trio.current_time() - started)
            raise RelayError("a share did not arrive: " + "; ".join(failures))
        key = bytearray(bits // 8)
        for share in shares:
            key = rp.xor(key, share)
        if self.metrics is not None:
            self.metrics.request("delivered", max(r.hops for r in routes), trio.current_time() - started)
        try:
            return group, bytes(key), routes
        finally:
            rp.erase(key)

    async def _relay(self, route: Route, bits: int, *, group: str = "", shares: int = 1,
                     note: bytes = b"", hold: bool = False) -> tuple[str, bytes]:
        first = route.links[0]
        if first not in self._relay_out:
            raise RelayError(f"link {first} is not connected")
        relay_id = str(uuid.uuid4())
        # registered before its journal row exists: the settlement never takes a running request for a failed one
        waiter = self._waiters[relay_id] = _Waiter()
        key = None
        try:
            try:
                keys = await self._store.call(self._take_first, first, bits, relay_id, route.path[-1], group)
            except KeyUnavailable as exc:
                raise RelayError(f"no key on link {first}: {exc}") from None
            except KeyStoreError as exc:
                raise RelayError(f"the request cannot be recorded: {exc}") from None
            self._consumed(first, keys)
            material = bytearray(b"".join(k.material for k in keys))
            key, sends = self.endpoint.start(relay_id, route.path, route.links, bits, tuple(k.key_id for k in keys),
                                             bytes(material), trio.current_time(), group=group, shares=shares,
                                             note=note)
            rp.erase(material)
            self._send_all(sends)
            with trio.move_on_after(self.settings.request_timeout_s):
                await waiter.done.wait()
            if not waiter.delivered:
                self._send_all(self.endpoint.abort(relay_id, "the source gave up waiting"))
                raise RelayError(waiter.reason or "no confirmation in time")
            if hold:
                self._held.add(relay_id)          # before its waiter goes: the settlement skips it
                return relay_id, bytes(key)
            try:
                await self._store.call(self.journal.close_request, relay_id)     # served from here on
            except KeyStoreError as exc:
                raise RelayError(f"the confirmed key cannot be recorded as served ({exc}): it is rolled back")
            return relay_id, bytes(key)
        except BaseException:
            self._unsettled = True
            self._settle_now.set()
            raise
        finally:
            del self._waiters[relay_id]
            rp.erase(key)

    async def serve_held(self, relay_ids: list[str]) -> None:
        """Keys relayed with `hold` may now be served: their journal rows go, in one transaction. RelayError
        when that cannot be recorded; then they are rolled back and must not be served."""
        try:
            with trio.CancelScope(shield=True):        # recorded, or rolled back: never left in between
                await self._store.call(self._close_requests, list(relay_ids))
        except KeyStoreError as exc:
            self.abandon_held(relay_ids)
            raise RelayError(f"the confirmed keys cannot be recorded as served ({exc}): they are rolled back") \
                from None
        self._held.difference_update(relay_ids)

    def abandon_held(self, relay_ids: list[str]) -> None:
        """Keys relayed with `hold` that will not be served: rolled back at their destination (settlement)."""
        self._held.difference_update(relay_ids)
        self._unsettled = True
        self._settle_now.set()

    def _close_requests(self, relay_ids: list[str]) -> None:
        with self.store.batch():
            for relay_id in relay_ids:
                self.journal.close_request(relay_id)

    def _take_first(self, link_id: str, bits: int, relay_id: str, destination: str, group: str):
        """Blocking: the first link's keys and the journal row of the request, in one transaction."""
        with self.store.batch():
            keys = self.store.take_bits(link_id, bits)
            self.journal.open_request(relay_id, destination, group)
            self.journal.record_sent(relay_id, link_id, [k.key_id for k in keys])
        return keys

    def _take_hop(self, up_link: str, key_ids: tuple[str, ...], relay_id: str, down_link: str | None, bits: int):
        """Blocking: a hop's keys (hop_keys.take_hop_keys) and, at a relay, the journal row of the keys it
        sends on, in one transaction."""
        with self.store.batch():
            upstream, down = take_hop_keys(self.store, up_link, key_ids, relay_id, down_link, bits)
            if down is not None:
                self.journal.record_sent(relay_id, down_link, [k.key_id for k in down])
        return upstream, down

    # -- settlement of requests that did not complete ---------------------------------------------------
    async def _settle(self) -> None:
        """Roll back at their destination the journal's requests that no longer run (failed, or started
        before a restart), every SETTLE_INTERVAL_S until each destination answers."""
        while True:
            with trio.move_on_after(SETTLE_INTERVAL_S):
                await self._settle_now.wait()
            self._settle_now = trio.Event()
            now = trio.current_time()
            due = (len(self._confirmed) >= FORGET_BATCH or now - self._forgotten_at >= FORGET_INTERVAL_S
                   or self._unsettled)
            if self._confirmed and due:
                await self._forget_confirmed_hops()
                self._forgotten_at = now
            if not self._unsettled:
                continue                          # nothing ended without DONE: no store work in the quiet path
            self._unsettled = False
            pending = await self._erase_unconfirmed_hops()
            try:
                open_requests = await self._store.call(self.journal.open_requests)
            except KeyStoreError as exc:
                self._unsettled = True
                self._peer_log.log(logging.WARNING, "relay-journal", "relay journal unreadable: %s", exc)
                continue
            for request in open_requests:
                if request.relay_id in self._waiters or request.relay_id in self._held:
                    continue
                pending = True
                if time.time() - request.created_at > self.settings.key_expiry_s + SETTLE_INTERVAL_S:
                    # its key has expired at the destination anyway
                    await self._store.call(self.journal.close_request, request.relay_id)
                    log.warning("relay %s: no answer from %s to its rollback before the key expired there",
                                request.relay_id, request.destination)
                    continue
                try:
                    route = self.choose_route(request.destination, 0)
                except RelayError:
                    continue                      # no route yet (after a restart): the next round
                self._send_all(self.endpoint.rollback(request.relay_id, request.group, route.path, route.links))
            self._unsettled = self._unsettled or pending

    async def _forget_confirmed_hops(self) -> None:
        """The hops the next node took leave the journal (a row left after a crash costs only an ERASE_KEYS
        that changes nothing)."""
        done, self._confirmed = self._confirmed, set()
        try:
            await self._store.call(self.journal.forget_sent, done)
        except KeyStoreError as exc:
            self._confirmed |= done
            self._peer_log.log(logging.WARNING, "relay-journal", "relay journal: %s", exc)

    async def _erase_unconfirmed_hops(self) -> bool:
        """Ask the next node to erase the keys of the hops whose request ended here without its CONFIRM
        (journal.py). Whether any is left to settle."""
        await self._forget_confirmed_hops()
        try:
            sent = await self._store.call(self.journal.sent_keys)
        except KeyStoreError as exc:
            self._peer_log.log(logging.WARNING, "relay-journal", "relay journal: %s", exc)
            return True
        pending = False
        for hop in sent:
            if (hop.relay_id in self._waiters or hop.relay_id in self.endpoint.requests or hop.relay_id in self._taking
                    or (hop.relay_id, hop.link_id) in self._confirmed):
                continue                          # still running here (it ends in CONFIRM or an abort), or confirmed
            if time.time() - hop.created_at > self.settings.key_expiry_s:
                # no answer all this time (a node that does not know ERASE_KEYS): stop asking
                await self._store.call(self.journal.forget_sent, [(hop.relay_id, hop.link_id)])
                log.warning("link %s: no answer to erasing the keys of relay %s; stopped asking", hop.link_id,
                            hop.relay_id)
                continue
            pending = True
            self._send(rp.Send(hop.link_id, rp.encode_erase_keys(hop.relay_id, hop.key_ids)))
        return pending

    async def _erase_keys_here(self, event: rp.EraseKeys) -> None:
        try:
            erased = await self._store.call(erase_sent_keys, self.store, event.link_id, event.key_ids, event.relay_id)
        except KeyStoreError as exc:
            self._peer_log.log(logging.WARNING, "relay-erase", "link %s: cannot erase the keys of relay %s: %s",
                               event.link_id, event.relay_id, exc)
            return                                # the other end asks again
        if erased:
            self._peer_log.log(logging.INFO, "relay-erase", "link %s: erased %d key(s) of relay %s whose FORWARD "
                               "never arrived (the other end had taken them)", event.link_id, erased, event.relay_id)
        self._send(rp.Send(event.link_id, rp.encode_keys_erased(event.relay_id)))

    async def _roll_back_here(self, event: rp.RollbackReceived) -> None:
        s = event.settle
        self._rolled_back[s.group] = None
        while len(self._rolled_back) > REMEMBERED_ROLLBACKS:
            self._rolled_back.pop(next(iter(self._rolled_back)))
        _, parts = self._shares.pop(s.group, (0.0, {}))
        for part in parts.values():
            rp.erase(part)
        try:
            outcome = await self._store.call(self._erase_relayed, s.group)
        except KeyStoreError as exc:
            self._peer_log.log(logging.WARNING, "relay-rollback", "relay %s: cannot roll back key %s: %s",
                               s.relay_id, s.group, exc)
            return                                # the source asks again
        level = logging.WARNING if outcome == rp.DELIVERED else logging.INFO
        self._peer_log.log(level, "relay-rolled-back", "relay %s: rolled back at this destination for source %s "
                           "(key %s %s)", s.relay_id, s.path[0], s.group, rp.OUTCOMES[outcome])
        self._send_all(self.endpoint.rolled_back(event, outcome))

    def _erase_relayed(self, key_id: str) -> int:
        """Blocking: erase a relayed key not yet fetched, and what its note's consumer recorded for it (in
        the same transaction); the outcome for ROLLED_BACK."""
        with self.store.batch():
            if self.rollback_handler is not None:
                self.rollback_handler(RELAY_LINK_ID, key_id)
            try:
                state = self.store.state(RELAY_LINK_ID, key_id)
            except KeyNotFound:
                return rp.ABSENT
            if state.holds_material:
                self.store.apply_resync(RELAY_LINK_ID, [], [], [key_id])
                return rp.ERASED
            return rp.DELIVERED if state is KeyState.DELIVERED else rp.ABSENT

    async def _settled(self, event: rp.RolledBack) -> None:
        try:
            if await self._store.call(self.journal.close_request, event.relay_id):
                log.info("relay %s: settled, the destination rolled it back (key %s)", event.relay_id,
                         rp.OUTCOMES[event.outcome])
        except KeyStoreError as exc:
            self._peer_log.log(logging.WARNING, "relay-journal", "relay journal: %s", exc)

    # -- relay channel ---------------------------------------------------------------------------------
    async def _serve_relay(self, link_id: str, stream: MuxStream) -> None:
        send, receive = trio.open_memory_channel[bytes](math.inf)
        self._relay_out[link_id] = send
        self._topology_changed()
        self._unsettled = True           # hops on this link left unconfirmed (before a restart) are settled now
        self._settle_now.set()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(_write_all, receive, stream, packed=True))
                try:
                    while True:
                        record = await stream.receive()
                        try:
                            messages = rp.unpack(record)
                        except rp.RelayWireError as exc:
                            self._handle(link_id, [rp.Refused(f"malformed record: {exc}")])
                            continue
                        for payload in messages:
                            self._handle(link_id, self.endpoint.receive(link_id, payload, trio.current_time()))
                except SessionClosedError:
                    pass
                nursery.cancel_scope.cancel()
        finally:
            if self._relay_out.get(link_id) is send:
                del self._relay_out[link_id]
            self._handle(link_id, self.endpoint.link_down(link_id))
            self._topology_changed()

    def _handle(self, link_id: str, events: list) -> None:
        for event in events:
            if isinstance(event, rp.Send):
                self._send(event)
            elif isinstance(event, rp.ForwardReceived):
                self._spawn(self._take_and_forward, event)
            elif isinstance(event, rp.KeyReady):
                # DONE (the next event) goes out only once the key is stored: handled there
                self._spawn(self._store_ready, event, [e for e in events if isinstance(e, rp.Send)])
                return
            elif isinstance(event, rp.Delivered):
                self._finish_waiter(event.relay_id, True, "")
            elif isinstance(event, rp.Confirmed):
                self._confirmed.add((event.relay_id, event.link_id))
            elif isinstance(event, rp.EraseKeys):
                self._spawn(self._erase_keys_here, event)
            elif isinstance(event, rp.KeysErased):
                self._confirmed.add((event.relay_id, event.link_id))
            elif isinstance(event, rp.RollbackReceived):
                self._spawn(self._roll_back_here, event)
            elif isinstance(event, rp.RolledBack):
                self._spawn(self._settled, event)
            elif isinstance(event, rp.Aborted):
                self._unsettled = True            # its journal rows (if any) settle in the next round
                self._finish_waiter(event.relay_id, False, event.reason)
                if self.metrics is not None and event.role != rp.SOURCE:
                    self.metrics.passed(event.role, "aborted")
                self._peer_log.log(logging.INFO, "relay-aborted", "relay %s aborted at this %s: %s", event.relay_id,
                                   event.role, event.reason)
            elif isinstance(event, rp.Refused):
                if self.metrics is not None:
                    self.metrics.refused()
                self._peer_log.log(logging.WARNING, "relay-refused", "link %s: refused a relay message: %s",
                                   link_id, event.reason)

    def _spawn(self, call, *args) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(call, *args)

    def _send(self, send: rp.Send) -> None:
        out = self._relay_out.get(send.link_id)
        if out is not None:
            out.send_nowait(send.payload)

    def _send_all(self, events: list) -> None:
        self._handle("", events)

    def _finish_waiter(self, relay_id: str, delivered: bool, reason: str) -> None:
        waiter = self._waiters.get(relay_id)
        if waiter is not None and not waiter.done.is_set():
            waiter.delivered, waiter.reason = delivered, reason
            waiter.done.set()

    async def _take_and_forward(self, event: rp.ForwardReceived) -> None:
        f, via = event.forward, event.via_link
        upstream = down = None
        try:
            down_link = f.links[f.hop + 1] if event.role == rp.RELAY else None
            if down_link is not None and down_link not in self._relay_out:
                raise RelayError(f"link {down_link} towards {f.path[f.hop + 2]} is not connected")
            self._taking.add(f.relay_id)
            upstream, down = await self._store.call(self._take_hop, via, f.key_ids, f.relay_id, down_link, f.bits)
            self._consumed(via, upstream)
            up_bytes = b"".join(k.material for k in upstream)
            if down is None:
                sends = self.endpoint.arrive(f, via, up_bytes, trio.current_time())
            else:
                self._consumed(down_link, down)
                sends = self.endpoint.forward(f, via, up_bytes, tuple(k.key_id for k in down),
                                              b"".join(k.material for k in down), trio.current_time())
            if self.metrics is not None:
                self.metrics.passed(event.role, "forwarded")
            self._send_all(sends)
        except (KeyStoreError, RelayError, rp.RelayProtocolError) as exc:
            self._send_all(self.endpoint.refuse_forward(f, via, _reason(exc)))
        finally:
            self._taking.discard(f.relay_id)

    async def _store_ready(self, event: rp.KeyReady, sends: list) -> None:
        key_id, key = event.relay_id, event.key
        if event.shares > 1:
            try:
                key = self._add_share(event)
            except KeyStoreError as exc:
                self._send(rp.Send(sends[0].link_id, rp.encode_abort(event.relay_id, str(exc))))
                return
            if key is None:              # more shares to come: this one is held (in memory) until then
                for send in sends:
                    self._send(send)
                return
            key_id = event.group
        try:
            await self._store.call(self._keep, key_id, key, event.source, event.note)
        except Exception as exc:                    # noqa: BLE001 - the store or the note's consumer refused
            request_link = sends[0].link_id if sends else ""
            self._send(rp.Send(request_link, rp.encode_abort(event.relay_id, f"destination cannot store: {exc}")))
            return
        if self.metrics is not None:
            self.metrics.passed(rp.DESTINATION, "delivered")
        for send in sends:
            self._send(send)

    def _add_share(self, event: rp.KeyReady) -> bytes | None:
        """Hold one confirmed share of a multi-path key; the key (XOR of all shares) once the last came."""
        now = trio.current_time()
        for group, (deadline, parts) in list(self._shares.items()):
            if deadline <= now:                     # a share that never came: the others are erased
                for part in parts.values():
                    rp.erase(part)
                del self._shares[group]
        if event.group not in self._shares and len(self._shares) >= MAX_SHARE_GROUPS:
            raise KeyStoreError("too many multi-path keys waiting for their other shares")
        deadline, parts = self._shares.setdefault(event.group, (now + self.settings.request_timeout_s, {}))
        parts[event.relay_id] = bytearray(event.key)
        if len(parts) < event.shares:
            return None
        del self._shares[event.group]
        key = bytearray(len(event.key))
        for part in parts.values():
            key = rp.xor(key, part)
            rp.erase(part)
        return bytes(key)

    def _keep(self, relay_id: str, key: bytes, source: str, note: bytes = b"") -> None:
        """Blocking: the confirmed key, available by id only (never allocated here), until fetched once;
        with a note, the note's consumer (the ETSI 014 KME) records it in the same transaction, or
        nothing is kept. A key the source rolled back meanwhile is not kept."""
        if relay_id in self._rolled_back:
            raise RelayError("the source rolled the request back")
        with self.store.batch():
            self.store.put_pending(RELAY_LINK_ID, 0, [(relay_id, key)], expires_at=time.time()
                                   + self.settings.key_expiry_s, allocatable=[False])
            self.store.commit_frame(RELAY_LINK_ID, 0)
            if note:
                if self.note_handler is None:
                    raise RelayError("this node has no consumer for the request's note (no [etsi014])")
                self.note_handler(source, RELAY_LINK_ID, relay_id, note)

    def _consumed(self, link_id: str, keys: list[StoredKey]) -> None:
        if self.metrics is not None:
            self.metrics.consumed(link_id, sum(k.bits for k in keys))

    # -- the destination's consumer --------------------------------------------------------------------
    async def fetch_key(self, key_id: str) -> StoredKey:
        """Deliver a relayed key once (KeyNotFound when this node holds no such key)."""
        return await self._store.call(self._fetch, key_id)

    def _fetch(self, key_id: str) -> StoredKey:
        if self.store.state(RELAY_LINK_ID, key_id) is KeyState.RESERVED:     # an ETSI 014 KME's, not /v1's
            raise KeyNotFound(f"key {key_id} is not a /v1 key")
        return self.store.deliver(RELAY_LINK_ID, key_id)


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:rp.MAX_REASON_BYTES]


async def _write_all(receive: trio.MemoryReceiveChannel, stream: MuxStream, *, packed: bool = False) -> None:
    """Send what is queued for the peer, in order. `packed`: whatever queued while the previous write was
    on its way goes out as one record (rp.pack), so a busy link carries one record per burst."""
    async for payload in receive:
        if not packed:
            await stream.send(payload)
            continue
        await trio.lowlevel.checkpoint()    # messages made runnable now join this record
        batch = [payload]
        while True:
            try:
                batch.append(receive.receive_nowait())
            except trio.WouldBlock:
                break
        for record in rp.pack(batch):
            await stream.send(record)


def build_relay(config, links, app) -> RelayService | None:
    """The daemon's relay service over its relay links (None without [node]); registers its channel kinds
    on each link's LinkChannel, so call it before the links run."""
    if config.node is None:
        return None
    relay_links = [link for link in config.relay_links() if link.link_id in links.channels]
    channels = {link.link_id: links.channels[link.link_id] for link in relay_links}
    signing_key = channels[relay_links[0].link_id].signing_key
    relay = config.relay
    settings = RelaySettings(config.node.id, config.node.trust_level, relay.hop_limit, relay.min_trust,
                             relay.announce_interval_s, relay.max_age_s, relay.request_timeout_s, relay.key_expiry_s,
                             max_announcements_per_s=relay.max_announcements_per_s)

    def rates(link_id: str) -> tuple[float, float]:
        engine = links.engines.get(link_id)
        if engine is None:
            return 0.0, math.nan
        qber = engine.status.last_qber
        return engine.status.rates()[0], qber if qber is not None else math.nan

    return RelayService(settings, signing_key, channels, app.keystore, rates=rates, metrics=app.metrics.relay())

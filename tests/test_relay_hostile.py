"""A hostile neighbour over a real authenticated session (tests/relay_sockets.py: the daemon's relay service
objects, real TCP/TLS, a real SQLite key store per node). On the chain S - A - H, H is a genuine node that
also writes raw records on its real session to A: malformed, forged-signature, replayed, oversize,
impersonating and flooding link-state announcements, and malformed, oversize, replayed, misrouted,
out-of-order, forged and off-route relay messages, and rollbacks forged in another node's name, unsigned or
replayed. A refuses each with a log line and a metric, keeps running, hands
out and erases no key it should not, and still relays genuine keys both ways through it."""
from __future__ import annotations

import dataclasses
import logging
import time
import uuid

import trio

from qkdd.keystore import KeyState
from qkdd.link_channel import LINKSTATE_CHANNEL, RELAY_CHANNEL
from qkdd.relay import protocol as rp
from qkdd.relay.linkstate import MAX_ANNOUNCEMENT_BYTES, Announcement
from qkdd.relay.service import RELAY_LINK_ID
from tests.relay_sockets import SocketNet, capture_streams, state_of

NODES, LINKS = ["S", "A", "H"], [("S", "A"), ("A", "H")]


def announcement_refusals(net: SocketNet, result: str) -> float:
    return net["A"].metric("qkd_relay_announcements_total", result=result)


async def relay_both_ways(net: SocketNet) -> None:
    for src, dst in (("S", "H"), ("H", "S")):
        await net.wait_route(src, dst, hops=2)
        key_id, key, routes = await net.service(src).request_key(dst, 256)
        assert routes[0].path == (src, "A", dst)
        assert (await net.service(dst).fetch_key(key_id)).material == key


def test_relay_hostile_neighbour_over_a_real_session_is_refused_and_genuine_relays_go_on(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="qkdd.relay")
    net = SocketNet(tmp_path, NODES, LINKS, keys_per_link=48)
    # A's own share of link A-H (A is its first end), the newest keys: genuine relays take the oldest first
    a_share = net.seeded["A-H"][0::2][-4:]
    streams: dict = {}
    sent_by_h: list[bytes] = []
    unknown = str(uuid.uuid4())                # a relay id no node has seen
    served: list[str] = []                     # the key S relays to A, whose rollback H forges

    def hostile(node) -> None:
        capture_streams(node.channels["A-H"], streams)
        send = node.service._send

        def recording(event):                      # H's genuine relay messages, for replay
            sent_by_h.append(event.payload)
            send(event)
        node.service._send = recording

    async def main():
        async with trio.open_nursery() as nursery:
            await net.start("S", nursery)
            await net.start("A", nursery)
            h = await net.start("H", nursery, before_run=hostile)
            await relay_both_ways(net)
            first_h = h.service.db.held["H"].payload
            await net.wait_for("H to announce again", lambda: h.service.db.held["H"].payload != first_h)
            ls, rl = streams[LINKSTATE_CHANNEL], streams[RELAY_CHANNEL]
            assert all(state_of(net["A"].store, "A-H", k) is KeyState.AVAILABLE for k in a_share)
            refused_before = net["A"].metric("qkd_relay_refused_messages_total")

            # -- link-state announcements ---------------------------------------------------------------
            current = h.service.db.held["H"].payload
            forged = current[:-1] + bytes([current[-1] ^ 1])
            impersonating = Announcement("A", h.service.db.next_sequence(time.time()), 100,
                                         h.service.public_key, ()).sign(h.identity)
            claiming_s = Announcement("S", h.service.db.next_sequence(time.time()), 100,
                                      h.service.public_key, ()).sign(h.identity)
            for payload in (b"QLSA\x01garbage", forged, first_h, b"\x00" * (MAX_ANNOUNCEMENT_BYTES + 1),
                            impersonating, claiming_s):
                await ls.send(payload)
            await net.wait_for("A to refuse the announcements", lambda: (
                announcement_refusals(net, "malformed") >= 2 and announcement_refusals(net, "bad-signature") >= 1
                and announcement_refusals(net, "stale") >= 1 and announcement_refusals(net, "impersonation") >= 1
                and announcement_refusals(net, "key-mismatch") >= 1))

            # -- relay messages -------------------------------------------------------------------------
            # a key S relayed to A that A holds for its consumer: H (off its route) forges S's rollback of it
            served_id, served_key, _ = await net.service("S").request_key("A", 256)
            served.append(served_id)
            in_s_name = rp.Settle(served_id, served_id, 1, ("S", "H", "A"), ("S-H", "A-H"), 0, int(time.time() * 1000))
            signed_by_h = rp.Settle(*dataclasses.astuple(in_s_name)[:-1], signature=h.identity.sign(
                rp.settlement_signed_part(rp.MessageType.ROLLBACK, in_s_name), rp.SETTLE_SIGNATURE_CONTEXT))
            of_nothing = rp.Settle(unknown, unknown, 0, ("H", "A"), ("A-H",), 0, int(time.time() * 1000))
            of_nothing = rp.Settle(*dataclasses.astuple(of_nothing)[:-1], signature=h.identity.sign(
                rp.settlement_signed_part(rp.MessageType.ROLLBACK, of_nothing), rp.SETTLE_SIGNATURE_CONTEXT))
            replayed = next(p for p in sent_by_h if rp.decode(p)[0] is rp.MessageType.FORWARD)
            own_share_forward = rp.encode_forward(rp.Forward(unknown, "H", "A", 256, 0, ("H", "A"), ("A-H",),
                                                             tuple(a_share[:1]), b""))
            spoofed = rp.encode_forward(rp.Forward(str(uuid.uuid4()), "S", "H", 256, 1, ("S", "A", "H"),
                                                   ("S-A", "A-H"), tuple(a_share[1:2]), b"\x01" * 32))
            records = [b"\x00\x00\x00\x09abc",                                       # lengths past the record
                       rp.pack([b"\x07" + bytes(40)])[0],                            # a message of no version
                       b"\x00" * (rp.MAX_RECORD_BYTES + rp.MAX_MESSAGE_BYTES + 1),   # oversize record
                       rp.pack([replayed])[0],                                       # replayed FORWARD
                       rp.pack([spoofed])[0],                                        # misrouted FORWARD
                       rp.pack([rp.encode_tag(rp.MessageType.CONFIRM, unknown, bytes(32)),   # out of order
                                rp.encode_tag(rp.MessageType.COMMIT, unknown, bytes(32)),
                                rp.encode_done(unknown), rp.encode_abort(unknown, "no such request")])[0],
                       rp.pack([own_share_forward])[0],                              # names A's own keys
                       rp.pack([rp.encode_erase_keys(str(uuid.uuid4()), tuple(a_share[2:4]))])[0],
                       rp.pack([rp.encode_settle(rp.MessageType.ROLLBACK, rp.Settle(       # off its route
                           unknown, unknown, 0, ("S", "A"), ("S-A",)))])[0],
                       rp.pack([rp.encode_settle(rp.MessageType.ROLLBACK, of_nothing)])[0]]     # H's own, no key
            for record in records:
                await rl.send(record)
            await net.wait_for("A to refuse the relay messages",
                               lambda: net["A"].metric("qkd_relay_refused_messages_total") - refused_before >= 10)
            # settlement not signed by its sender: unsigned, signed by H in S's name, and a replay of H's own
            refused_before = net["A"].metric("qkd_relay_refused_messages_total")
            for settle in (in_s_name, signed_by_h, of_nothing):
                await rl.send(rp.pack([rp.encode_settle(rp.MessageType.ROLLBACK, settle)])[0])
            await net.wait_for("A to refuse the settlement messages",
                               lambda: net["A"].metric("qkd_relay_refused_messages_total") - refused_before >= 3)

            # a FORWARD with H's own keys, then a COMMIT under the wrong key: A aborts and serves nothing
            forged_id = str(uuid.uuid4())
            taken = h.store.take_bits("A-H", 256)
            forward = rp.encode_forward(rp.Forward(forged_id, "H", "A", 256, 0, ("H", "A"), ("A-H",),
                                                   tuple(k.key_id for k in taken), b""))
            await rl.send(rp.pack([forward])[0])
            await net.wait_for("A to confirm the FORWARD", lambda: forged_id in net.service("A").endpoint.requests)
            await rl.send(rp.pack([rp.encode_tag(rp.MessageType.COMMIT, forged_id, bytes(32))])[0])
            await net.wait_for("A to abort it", lambda: forged_id not in net.service("A").endpoint.requests)

            # -- a flood of validly signed announcements of H: dropped beyond the rate, counted ---------
            for _ in range(100):
                sequence = h.service.db.next_sequence(time.time())
                await ls.send(Announcement("H", sequence, 100, h.service.public_key, ()).sign(h.identity))
            await net.wait_for("A to drop the flood", lambda: announcement_refusals(net, "rate-limited") >= 60)

            # -- A stands: genuine relays both ways, the genuine re-flood of H converges at A and S -----
            await net.wait_for("H's own next announcement at A and S", lambda: all(
                net.service(n).db.highest.get("H") == h.service.db.last_sequence for n in ("A", "S"))
                and net.service("A").db.held["H"].announcement.links, timeout_s=30)
            await relay_both_ways(net)
            a_store = net["A"].store
            assert all(state_of(a_store, "A-H", k) is KeyState.AVAILABLE for k in a_share)   # named, untouched
            assert net.held("A", RELAY_LINK_ID) == {served_id}               # only the key S served it
            assert (await net.service("A").fetch_key(served_id)).material == served_key     # not rolled back
            assert all(state_of(a_store, "A-H", k.key_id) is KeyState.DELIVERED for k in taken)  # accounted
            assert net.unmatched_link_keys() == {}
            assert not net["A"].stopped.is_set()
            nursery.cancel_scope.cancel()

    trio.run(main)
    log = "\n".join(r.getMessage() for r in caplog.records)
    for expected in ("(malformed): announcement of 65537 bytes", "(bad-signature)", "(stale)", "(impersonation)",
                     "(key-mismatch)", "(rate-limited)", "malformed record: message length past the record",
                     "malformed: relay message version 7", "malformed record: record of", "FORWARD replayed",
                     "FORWARD on a link or to a node its route does not name", "CONFIRM for no request here",
                     "the source's confirmation does not match", "aborted at this relay: KeyUnavailable",
                     "ROLLBACK on a link or to a node its route does not name",
                     f"rolled back at this destination for source H (key {unknown} absent)"):
        assert expected in log, expected

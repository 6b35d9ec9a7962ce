"""Link-state announcements and routes of the relay network, in memory: flooding over a small network
converges to the same topology at every node, forged, malformed, replayed or impersonating announcements
are refused without changing anything, and the flood rate limit (on trio's MockClock) drops an origin or a
link that goes too fast while floods still converge."""
from __future__ import annotations

import math

import pytest
import trio
from trio.testing import MockClock

from qkdd.peer import generate_identity
from qkdd.relay.flood_limit import LINK_BURST, ORIGIN_BURST, FloodLimiter
from qkdd.relay.linkstate import Announcement, LinkReport, LinkStateDatabase, decode, fingerprint
from qkdd.relay.routing import build_topology, disjoint_routes, route_along, shortest_route

WALL_S = 1_800_000_000.0


class Node:
    def __init__(self, node_id: str, trust: int = 100) -> None:
        self.node_id = node_id
        self.trust = trust
        self.key = generate_identity()
        self.public = self.key.public_key().public_bytes_raw()
        self.db = LinkStateDatabase(node_id, self.public, max_age_s=60.0)
        self.links: dict[str, Node] = {}        # link id -> neighbour
        self.stock: dict[str, int] = {}
        self.rate: dict[str, float] = {}

    def announce(self, now_s: float, wall_s: float = WALL_S) -> bytes:
        reports = tuple(LinkReport(n.node_id, link_id, fingerprint(n.public), self.stock.get(link_id, 1 << 20),
                                   self.rate.get(link_id, 1000.0), 0.02)
                        for link_id, n in sorted(self.links.items()) if self.db.neighbor_on(link_id) == n.node_id)
        announcement = Announcement(self.node_id, self.db.next_sequence(wall_s), self.trust, self.public, reports)
        payload = announcement.sign(self.key)
        self.db.originate(announcement, payload, now_s)
        return payload


class Net:
    """Nodes joined by links; `flood` delivers announcements until nothing new is accepted."""

    def __init__(self, names: list[str], edges: list[tuple[str, str]], trust: dict[str, int] | None = None):
        self.nodes = {name: Node(name, (trust or {}).get(name, 100)) for name in names}
        for a, b in edges:
            link_id = f"{a}-{b}"
            self.nodes[a].links[link_id] = self.nodes[b]
            self.nodes[b].links[link_id] = self.nodes[a]
            self.nodes[a].db.pin(link_id, fingerprint(self.nodes[b].public))
            self.nodes[b].db.pin(link_id, fingerprint(self.nodes[a].public))
        self.refusals: list[str] = []

    def flood(self, now_s: float = 0.0, rounds: int = 3) -> None:
        for _ in range(rounds):          # twice: the second round names neighbours learnt in the first
            queue = [(node, link_id, node.announce(now_s)) for node in self.nodes.values() for link_id in node.links]
            queue = [(n.links[link_id], link_id, payload) for n, link_id, payload in queue]
            while queue:
                node, link_id, payload = queue.pop(0)
                result = node.db.receive(payload, link_id, now_s, WALL_S)
                if not result.accepted:
                    self.refusals.append(result.refusal)
                    continue
                for other_link, neighbor in node.links.items():
                    if other_link != link_id:
                        queue += [(neighbor, other_link, p) for p in result.flood]


def ring_and_chain() -> Net:
    # chain A-B-C-D-E-F and a second path B-X-D (a ring B-C-D-X)
    names = ["A", "B", "C", "D", "E", "F", "X"]
    edges = [("A", "B"), ("B", "C"), ("C", "D"), ("D", "E"), ("E", "F"), ("B", "X"), ("X", "D")]
    return Net(names, edges)


def test_relay_flooding_gives_every_node_the_same_topology_and_routes():
    net = ring_and_chain()
    net.flood()
    views = {name: build_topology(node.db.announcements()) for name, node in net.nodes.items()}
    reference = views["A"]
    assert sorted(reference.trust) == sorted(net.nodes)
    for view in views.values():
        assert view.edges == reference.edges
    route = shortest_route(reference, "A", "F")
    assert route is not None and route.hops == 5 and route.path[0] == "A" and route.path[-1] == "F"
    assert all(shortest_route(v, "A", "F") == route for v in views.values())
    assert set(net.refusals) <= {"duplicate", "stale", "unvouched"}       # flooding echoes only


def test_relay_route_prefers_stock_and_rate_and_respects_trust_and_hop_limit():
    net = ring_and_chain()
    net.nodes["C"].trust = 10
    net.nodes["B"].stock["B-X"] = 1 << 24         # B's stock towards X is higher than towards C
    net.nodes["B"].stock["B-C"] = 1 << 10
    net.flood()
    topology = build_topology(net.nodes["A"].db.announcements())
    assert shortest_route(topology, "A", "D").path == ("A", "B", "X", "D")
    assert shortest_route(topology, "A", "D", exclude=frozenset({"X"})).path == ("A", "B", "C", "D")
    assert shortest_route(topology, "A", "D", min_trust=50, exclude=frozenset({"X"})) is None   # C below
    assert shortest_route(topology, "A", "F", hop_limit=4) is None
    assert shortest_route(topology, "A", "D", need_bits=1 << 20).path == ("A", "B", "X", "D")
    assert route_along(topology, ["A", "B", "C", "D"]).links == ("A-B", "B-C", "C-D")
    assert route_along(topology, ["A", "C"]) is None
    routes = disjoint_routes(topology, "B", "D", 3)
    assert [r.path for r in routes] == [("B", "X", "D"), ("B", "C", "D")]
    assert routes[0].as_json(topology)["trust"]["relays"] == {"X": 100}


def test_relay_link_counts_only_when_both_ends_announce_it():
    net = Net(["A", "B", "C"], [("A", "B"), ("B", "C")])
    net.flood()
    # A announces a link to C that C never announces: not an edge
    a = net.nodes["A"]
    fake = Announcement("A", a.db.next_sequence(WALL_S), 100, a.public,
                        (LinkReport("C", "A-C", fingerprint(net.nodes["C"].public), 1 << 20, 1e6),))
    assert net.nodes["B"].db.receive(fake.sign(a.key), "A-B", 1.0, WALL_S).accepted
    topology = build_topology(net.nodes["B"].db.announcements())
    assert topology.edge("A", "C") is None and topology.edge("A", "B") is None


def test_relay_refuses_malformed_forged_replayed_and_impersonating_announcements():
    net = Net(["A", "B", "C"], [("A", "B"), ("B", "C")])
    net.flood()
    b_db = net.nodes["B"].db
    before = dict(b_db.highest)
    a = net.nodes["A"]
    good = a.announce(0.0)
    # malformed: truncated, garbage, wrong version
    for bad in (good[:100], b"\x00" * 50, good[:4] + b"\x09" + good[5:]):
        assert b_db.receive(bad, "A-B", 0.0, WALL_S).refusal == "malformed"
    # forged: a flipped byte in the signed part
    forged = bytearray(good)
    forged[12] ^= 1
    assert b_db.receive(bytes(forged), "A-B", 0.0, WALL_S).refusal in ("bad-signature", "malformed")
    assert b_db.receive(good, "A-B", 0.0, WALL_S).accepted
    # replayed: the same bytes again (an echo) and an older one
    assert b_db.receive(good, "A-B", 0.0, WALL_S).refusal == "duplicate"
    older = Announcement("A", 1_700_000_000_000, 100, a.public, ())
    assert b_db.receive(older.sign(a.key), "A-B", 0.0, WALL_S).refusal == "stale"
    # an announcement from far in the past is stale even for a node never heard of
    # impersonation: C's key signs an announcement claiming to be A
    c = net.nodes["C"]
    claim = Announcement("A", a.db.next_sequence(WALL_S) + 10, 100, c.public, ())
    assert b_db.receive(claim.sign(c.key), "B-C", 0.0, WALL_S).refusal == "key-mismatch"
    # a stranger's key claiming a new id is held aside (nobody vouches for it), never used
    stranger = generate_identity()
    lone = Announcement("Z", int(WALL_S * 1000), 255, stranger.public_key().public_bytes_raw(), ())
    assert b_db.receive(lone.sign(stranger), "B-C", 0.0, WALL_S).refusal == "unvouched"
    assert "Z" not in b_db.announcements()
    # our own id under another key
    own = Announcement("B", int(WALL_S * 1000) + 5, 100, c.public, ())
    assert b_db.receive(own.sign(c.key), "B-C", 0.0, WALL_S).refusal == "impersonation"
    assert {k: v for k, v in b_db.highest.items() if k != "A"} == {k: v for k, v in before.items() if k != "A"}


def test_relay_announcements_age_out_and_a_replay_stays_stale():
    net = Net(["A", "B", "C"], [("A", "B"), ("B", "C")])
    net.flood(now_s=0.0)
    c_db = net.nodes["C"].db
    kept = [p for p in c_db.payloads() if decode(p)[0].origin == "A"][0]
    assert "A" in c_db.announcements()
    assert c_db.expire(61.0) and "A" not in c_db.announcements()
    assert c_db.receive(kept, "B-C", 61.0, WALL_S).refusal == "duplicate"      # highest sequence kept
    topology = build_topology(c_db.announcements())
    assert shortest_route(topology, "C", "A") is None


def test_relay_unvouched_announcement_is_accepted_once_vouched():
    net = Net(["A", "B", "C"], [("A", "B"), ("B", "C")])
    a, b, c = (net.nodes[n] for n in "ABC")
    # C hears A's announcement (through B) before B's own, which vouches for A's key
    c.db.receive(b.announce(0.0), "B-C", 0.0, WALL_S)                 # B names itself on its link: accepted
    b.db.receive(a.announce(0.0), "A-B", 0.0, WALL_S)
    a_payload = a.announce(0.0)
    assert c.db.receive(a_payload, "B-C", 0.0, WALL_S).refusal == "unvouched"
    b_with_link = b.announce(0.0)                                     # now lists A with A's fingerprint
    result = c.db.receive(b_with_link, "B-C", 0.0, WALL_S)
    assert result.accepted and a_payload in result.flood and "A" in c.db.announcements()


@pytest.mark.parametrize("qber", [math.nan, 0.03])
def test_relay_announcement_round_trips(qber):
    node = Node("N1")
    announcement = Announcement("N1", 5, 7, node.public, (LinkReport("N2", "l1", b"\x01" * 32, 9, 1.5, qber, False),))
    decoded, signed, _ = decode(announcement.sign(node.key))
    assert decoded.links[0].neighbor == "N2" and decoded.trust_level == 7 and decoded.links[0].up is False
    assert signed == announcement.signed_part()


def test_relay_alternative_routes_list_distinct_paths_cheapest_first():
    from qkdd.relay.routing import alternative_routes
    net = ring_and_chain()
    net.flood()
    topology = build_topology(net.nodes["A"].db.announcements())
    paths = [r.path for r in alternative_routes(topology, "A", "D", 3)]
    assert sorted(paths) == [("A", "B", "C", "D"), ("A", "B", "X", "D")]
    assert alternative_routes(topology, "A", "D", 3, min_trust=200) == []


# -- flood rate limit (qkdd.relay.flood_limit), on trio's MockClock: time passes only by trio.sleep ------------

def run_mock(main):
    return trio.run(main, clock=MockClock(autojump_threshold=0))


def test_relay_an_origin_announcing_too_fast_is_dropped_then_accepted_at_the_configured_rate():
    net = Net(["A", "B"], [("A", "B")])
    net.flood()
    a, b = net.nodes["A"], net.nodes["B"]

    async def main():
        results = []
        for _ in range(60):                       # 100 a second for 0.6 s, each newer than the last
            results.append(b.db.receive(a.announce(trio.current_time()), "A-B", trio.current_time(), WALL_S))
            await trio.sleep(0.01)
        accepted = [r for r in results if r.accepted]
        limited = [r for r in results if r.refusal == "rate-limited"]
        # the burst (less the tokens net.flood spent) plus at most one refill a second
        assert ORIGIN_BURST - 3 <= len(accepted) <= ORIGIN_BURST + 1
        assert len(accepted) + len(limited) == 60 and "faster than 1/s" in limited[0].detail
        last_held = b.db.highest["A"]
        await trio.sleep(1.0)                     # one token back: A's next (its refresh) is accepted
        refresh = a.announce(trio.current_time())
        assert b.db.receive(refresh, "A-B", trio.current_time(), WALL_S).accepted
        assert b.db.highest["A"] > last_held and b.db.announcements()["A"] == decode(refresh)[0]
        # nothing but A's own bucket was spent: an echo of the held one is a duplicate, not a drop
        assert b.db.receive(refresh, "A-B", trio.current_time(), WALL_S).refusal == "duplicate"
    run_mock(main)


def test_relay_a_link_flooding_garbage_is_dropped_before_decoding_and_other_links_are_untouched():
    net = Net(["A", "B", "C"], [("A", "B"), ("B", "C")])
    net.flood()
    b, c = net.nodes["B"], net.nodes["C"]
    b.db.limiter = FloodLimiter()                 # full buckets (net.flood spent some of the first ones)

    async def main():
        refusals = []
        for _ in range(300):
            refusals.append(b.db.receive(b"\x00" * 64, "A-B", trio.current_time(), WALL_S).refusal)
            await trio.sleep(0.001)
        capacity = LINK_BURST + ORIGIN_BURST * (len(b.db.highest) + 1)
        looked_at = refusals.count("malformed")
        assert capacity <= looked_at <= capacity + 1                          # + 0.2 s of refill
        assert refusals.count("rate-limited") == 300 - looked_at
        # the other link's genuine announcement is accepted; on A-B, one is after a refill
        assert b.db.receive(c.announce(trio.current_time()), "B-C", trio.current_time(), WALL_S).accepted
        await trio.sleep(1.0)
        assert b.db.receive(net.nodes["A"].announce(trio.current_time()), "A-B", trio.current_time(),
                            WALL_S).accepted
    run_mock(main)


def test_relay_floods_converge_after_a_storm_of_originations():
    """Every node re-originates 40 times in four seconds (links flapping): many are dropped on the way, and
    the periodic refresh after the storm still gives every node every origin's latest announcement."""
    net = ring_and_chain()
    net.flood()
    dropped = []

    async def deliver(origin: Node, payload: bytes) -> None:
        queue = [(origin.links[link_id], link_id, payload) for link_id in origin.links]
        while queue:
            node, link_id, item = queue.pop(0)
            result = node.db.receive(item, link_id, trio.current_time(), WALL_S + trio.current_time())
            dropped.append(result.refusal == "rate-limited")
            if result.accepted:
                queue += [(n, other, p) for other, n in node.links.items() if other != link_id for p in result.flood]

    async def main():
        for _ in range(40):
            for node in net.nodes.values():
                await deliver(node, node.announce(trio.current_time(), WALL_S + trio.current_time()))
            await trio.sleep(0.1)
        assert any(dropped)
        for _ in range(3):                          # the refresh every 5 s (announce_interval_s)
            await trio.sleep(5.0)
            for node in net.nodes.values():
                await deliver(node, node.announce(trio.current_time(), WALL_S + trio.current_time()))
        for node in net.nodes.values():
            assert node.db.highest == {n: other.db.last_sequence for n, other in net.nodes.items()}
        views = [build_topology(node.db.announcements()).edges for node in net.nodes.values()]
        assert all(view == views[0] for view in views) and shortest_route(
            build_topology(net.nodes["A"].db.announcements()), "A", "F").hops == 5
    run_mock(main)

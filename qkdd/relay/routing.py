"""Topology and routes of the relay network, computed from the link-state database alone, so that every
node holding the same announcements finds the same routes (ties broken by the path's node ids).

A link counts in the topology only when both ends announce it (same link id, each listing the other's key
fingerprint, both up): one node cannot invent a link to another. The edge X->Y carries X's stock of
allocatable key on the link (X spends it when it forwards towards Y) and the lower of both ends' key rates.

Cost of an edge: 1 + RATE_REF_BPS / (rate + 1) + STOCK_REF_BITS / (stock + 1), so a route is mostly its
hop count, and among routes of equal length the one with higher key rate and stock wins; a route's cost is
the sum over its edges. Routes respect a hop limit, skip edges whose stock is below the bits a request
needs, and never pass through a node (other than the two ends) whose announced trust level is below the
required one.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from qkdd.relay.linkstate import Announcement, fingerprint

RATE_REF_BPS = 1000.0
STOCK_REF_BITS = 65536.0
DEFAULT_HOP_LIMIT = 16


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    link_id: str
    stock_bits: int
    key_rate_bps: float
    qber: float

    @property
    def cost(self) -> float:
        return 1.0 + RATE_REF_BPS / (self.key_rate_bps + 1.0) + STOCK_REF_BITS / (self.stock_bits + 1.0)


@dataclass
class Topology:
    trust: dict[str, int] = field(default_factory=dict)              # node -> announced trust level
    edges: dict[str, list[Edge]] = field(default_factory=dict)       # node -> its outgoing edges

    def edge(self, src: str, dst: str) -> Edge | None:
        return next((e for e in self.edges.get(src, ()) if e.dst == dst), None)


@dataclass(frozen=True)
class Route:
    path: tuple[str, ...]            # node ids, source first
    links: tuple[str, ...]           # link ids, one per hop
    cost: float
    key_rate_bps: float              # the bottleneck
    stock_bits: int                  # the lowest stock along the route
    min_trust: int                   # the lowest trust level of the relays (the ends' own when none)

    @property
    def hops(self) -> int:
        return len(self.links)

    def as_json(self, topology: Topology) -> dict:
        relays = self.path[1:-1]
        return {"path": list(self.path), "links": list(self.links), "hops": self.hops,
                "cost": round(self.cost, 6), "key_rate_bps": self.key_rate_bps, "stock_bits": self.stock_bits,
                "trust": {"relays": {node: topology.trust.get(node, 0) for node in relays},
                          "min_relay_trust": self.min_trust if relays else None,
                          "relays_learn_key": len(relays) > 0}}


def build_topology(announcements: dict[str, Announcement]) -> Topology:
    topology = Topology(trust={origin: a.trust_level for origin, a in announcements.items()})
    for origin, announcement in announcements.items():
        for link in announcement.links:
            other = announcements.get(link.neighbor)
            if other is None or not link.up or link.neighbor_fingerprint != fingerprint(other.public_key):
                continue
            back = next((r for r in other.links if r.link_id == link.link_id and r.neighbor == origin), None)
            if back is None or not back.up or back.neighbor_fingerprint != fingerprint(announcement.public_key):
                continue
            rate = min(link.key_rate_bps, back.key_rate_bps)
            topology.edges.setdefault(origin, []).append(
                Edge(origin, link.neighbor, link.link_id, link.stock_bits, rate, link.qber))
    for edges in topology.edges.values():
        edges.sort(key=lambda e: (e.dst, e.link_id))
    return topology


def shortest_route(topology: Topology, src: str, dst: str, *, hop_limit: int = DEFAULT_HOP_LIMIT,
                   min_trust: int = 0, need_bits: int = 0, exclude: frozenset[str] = frozenset()) -> Route | None:
    """The cheapest route from `src` to `dst` within the limits, or None."""
    if src == dst or src not in topology.trust or dst not in topology.trust:
        return None
    # Dijkstra over (node, hops) so that the hop limit is exact; ties by (cost, hops, path).
    queue: list[tuple[float, int, tuple[str, ...], tuple[str, ...]]] = [(0.0, 0, (src,), ())]
    done: set[tuple[str, int]] = set()
    while queue:
        cost, hops, path, links = heapq.heappop(queue)
        node = path[-1]
        if node == dst:
            return _route(topology, path, links, cost)
        if (node, hops) in done or hops >= hop_limit:
            continue
        done.add((node, hops))
        for edge in topology.edges.get(node, ()):
            nxt = edge.dst
            if nxt in path or edge.stock_bits < need_bits:
                continue
            if nxt != dst and (nxt in exclude or topology.trust.get(nxt, 0) < min_trust):
                continue
            heapq.heappush(queue, (cost + edge.cost, hops + 1, path + (nxt,), links + (edge.link_id,)))
    return None


def disjoint_routes(topology: Topology, src: str, dst: str, count: int, **limits) -> list[Route]:
    """Up to `count` routes sharing no relay node: the cheapest, then the cheapest avoiding its relays, and
    so on (greedy; a direct link can serve once)."""
    routes: list[Route] = []
    exclude = set(limits.pop("exclude", frozenset()))
    used_direct = False
    while len(routes) < count:
        route = shortest_route(topology, src, dst, exclude=frozenset(exclude), **limits)
        if route is None or (route.hops == 1 and used_direct):
            if route is not None and route.hops == 1:
                # look for one avoiding the direct link: drop it from a copy of the topology
                trimmed = Topology(topology.trust, {n: [e for e in es if not (n == src and e.dst == dst)]
                                                    for n, es in topology.edges.items()})
                route = shortest_route(trimmed, src, dst, exclude=frozenset(exclude), **limits)
            if route is None:
                break
        used_direct = used_direct or route.hops == 1
        routes.append(route)
        exclude.update(route.path[1:-1])
    return routes


def route_along(topology: Topology, path: list[str], *, need_bits: int = 0) -> Route | None:
    """The route through the given node ids, if every hop is a link of the topology with enough stock."""
    links = []
    cost = 0.0
    for a, b in zip(path, path[1:]):
        edge = topology.edge(a, b)
        if edge is None or edge.stock_bits < need_bits:
            return None
        links.append(edge.link_id)
        cost += edge.cost
    if len(path) < 2 or len(set(path)) != len(path):
        return None
    return _route(topology, tuple(path), tuple(links), cost)


def _route(topology: Topology, path: tuple[str, ...], links: tuple[str, ...], cost: float) -> Route:
    edges = [topology.edge(a, b) for a, b in zip(path, path[1:])]
    relays = path[1:-1]
    trust = min((topology.trust.get(n, 0) for n in relays), default=min(topology.trust.get(n, 0) for n in
                                                                       (path[0], path[-1])))
    return Route(path, links, cost, min((e.key_rate_bps for e in edges), default=math.inf),
                 min(e.stock_bits for e in edges), trust)


def alternative_routes(topology: Topology, src: str, dst: str, count: int, **limits) -> list[Route]:
    """The cheapest route, then the cheapest avoiding each one of its relays in turn (distinct paths,
    cheapest first): the choices an operator sees in the route list, up to `count`."""
    exclude = frozenset(limits.pop("exclude", frozenset()))
    best = shortest_route(topology, src, dst, exclude=exclude, **limits)
    if best is None:
        return []
    found = {best.path: best}
    for relay in best.path[1:-1]:
        other = shortest_route(topology, src, dst, exclude=exclude | {relay}, **limits)
        if other is not None:
            found.setdefault(other.path, other)
    return sorted(found.values(), key=lambda r: (r.cost, r.hops, r.path))[:count]

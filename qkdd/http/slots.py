"""Which connections a listener holds, and whether a newcomer gets in (sans-IO: server.py acts on the answers).

Theory of operation. Every accepted connection holds a slot until it closes. A connection is
*unauthenticated* until it shows a verified client certificate: during its TLS handshake, and for good
on a plain listener or when it presents none. Three bounds apply to a newcomer:

    bound                        counts                                        applies on
    max_connections              every slot                                    every listener
    max_connections_per_source   the slots of its source (an IPv4 address,     every listener, not to
                                 an IPv6 /64)                                  loopback clients
    max_connections −            the unauthenticated slots                     listeners that verify
      authenticated_reserve                                                    client certificates

Within the bounds the newcomer is let in. Past one, a listener that verifies client certificates lets it
take the slot of an idle unauthenticated connection (handshaking or waiting for a request, not being
served) that has had MIN_AGE_S to authenticate: the oldest of the newcomer's own source when that
source is full, else the oldest of the source holding the most unauthenticated slots. With no such
connection, and always on a plain listener, the newcomer is refused.

Why: every connection starts unauthenticated, so on a listener that only refuses, one host holding idle
sockets keeps every SAE from reaching its handshake until the sockets time out. Taking the oldest idle
slot gives each connection its fair time to authenticate, and the reserve keeps authenticated clients
room that no unauthenticated crowd can fill; MIN_AGE_S stops a flood of newcomers from displacing a
client halfway through its handshake. A plain listener authenticates nobody, so displacing would only
trade one anonymous client for another: there a connection once accepted keeps its slot until its
own timeouts, and the per-source bound keeps one remote host from taking them all. Loopback clients run
on the daemon's own host (trusted with keys by default, qkdd.api.callers) and share one address, so
they are not bound per source.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .messages import HTTPLimits

MIN_AGE_S = 1.0        # an unauthenticated connection keeps its slot at least this long
LOOPBACK = "loopback"  # the source of every loopback client


@dataclass(eq=False)
class Slot:
    """One accepted connection, as the table sees it. `busy` is set by the connection while a request is
    being served (such a connection is never displaced)."""

    source: str
    opened_s: float
    authenticated: bool = False
    busy: bool = False
    displaced: bool = False
    owner: object = field(default=None, repr=False)      # the HTTPConnection holding the slot


@dataclass(frozen=True)
class Admission:
    slot: Slot | None                 # None: refused
    displaced: object | None = None   # the owner of the slot the newcomer took (to be closed now)
    refusal: str = ""                 # why it was refused: "listener" or "source"


def source_of(client: tuple[str, int] | None) -> str:
    """The source a client address counts against: the IPv4 address, the IPv6 /64, or LOOPBACK."""
    if client is None:
        return "unknown"
    try:
        address = ipaddress.ip_address(client[0].split("%", 1)[0])
    except ValueError:
        return client[0]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return LOOPBACK
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class SlotTable:
    def __init__(self, limits: HTTPLimits, verifies_clients: bool) -> None:
        self.max_connections = limits.max_connections
        self.per_source = limits.max_connections_per_source
        self.verifies_clients = verifies_clients
        reserve = min(limits.authenticated_reserve, limits.max_connections - 1) if verifies_clients else 0
        self.max_unauthenticated = limits.max_connections - reserve
        self._slots: set[Slot] = set()
        self._per_source: dict[str, int] = {}
        # Unauthenticated slots by source, oldest first (dicts keep insertion order).
        self._unauthenticated: dict[str, dict[Slot, None]] = {}
        self.unauthenticated = 0

    @property
    def total(self) -> int:
        return len(self._slots)

    def count_of(self, source: str) -> int:
        return self._per_source.get(source, 0)

    def admit(self, client: tuple[str, int] | None, now_s: float) -> Admission:
        """Let a newcomer from `client` in, displacing an idle unauthenticated connection if it must."""
        source = source_of(client)
        victim = None
        if source != LOOPBACK and self.count_of(source) >= self.per_source:
            victim = self._oldest_idle((source,), now_s)
            if victim is None:
                return Admission(None, refusal="source")
        elif self.total >= self.max_connections or self.unauthenticated >= self.max_unauthenticated:
            heaviest = sorted(self._unauthenticated, key=lambda s: len(self._unauthenticated[s]), reverse=True)
            victim = self._oldest_idle(heaviest, now_s)
            if victim is None:
                return Admission(None, refusal="listener")
        displaced = None
        if victim is not None:
            displaced = victim.owner
            victim.displaced = True
            self.release(victim)
        slot = Slot(source, now_s)
        self._slots.add(slot)
        self._per_source[source] = self.count_of(source) + 1
        self._unauthenticated.setdefault(source, {})[slot] = None
        self.unauthenticated += 1
        return Admission(slot, displaced)

    def authenticate(self, slot: Slot) -> None:
        """The connection showed a verified client certificate: it leaves the unauthenticated share."""
        if slot.authenticated or slot not in self._slots:
            return
        slot.authenticated = True
        self._forget_unauthenticated(slot)

    def release(self, slot: Slot) -> None:
        """The connection closed (or was displaced); releasing twice is harmless."""
        slot.owner = None                # no cycle between the connection and its slot: freed at once
        if slot not in self._slots:
            return
        self._slots.discard(slot)
        remaining = self._per_source[slot.source] - 1
        if remaining:
            self._per_source[slot.source] = remaining
        else:
            del self._per_source[slot.source]
        if not slot.authenticated:
            self._forget_unauthenticated(slot)

    def _forget_unauthenticated(self, slot: Slot) -> None:
        by_age = self._unauthenticated[slot.source]
        del by_age[slot]
        if not by_age:
            del self._unauthenticated[slot.source]
        self.unauthenticated -= 1

    def _oldest_idle(self, sources, now_s: float) -> Slot | None:
        if not self.verifies_clients:
            return None
        for source in sources:
            for slot in self._unauthenticated.get(source, ()):
                if now_s - slot.opened_s < MIN_AGE_S:
                    break                  # the rest of this source is younger still
                if not slot.busy:
                    return slot
        return None

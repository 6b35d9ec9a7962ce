"""The hop-by-hop relay state machine, every node in memory: the destination recovers the source's key
over 1 to 5 hops, each relay consumes one key on each side, the confirmation gates serving, and a hop
that dies, a bad tag, a replayed or misrouted message aborts or is refused."""
from __future__ import annotations

import dataclasses
import functools
import os
import time
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric import mldsa

from qkdd.relay import protocol as rp

KEY_BYTES = 32


def sign_settlement(identity, body: bytes) -> bytes:
    return identity.sign(body, rp.SETTLE_SIGNATURE_CONTEXT)


class Chain:
    """Nodes N0..Nk on a chain; each link holds shared keys at both ends (a dict per end)."""

    def __init__(self, hops: int, keys_per_link: int = 4) -> None:
        self.names = [f"N{i}" for i in range(hops + 1)]
        self.links = [f"L{i}" for i in range(hops)]
        self.neighbors = {}
        for i, link in enumerate(self.links):
            self.neighbors[(self.names[i], link)] = self.names[i + 1]
            self.neighbors[(self.names[i + 1], link)] = self.names[i]
        # each node's identity (ML-DSA-65), as the link-state database knows them: settlement messages are signed
        self.identities = {name: mldsa.MLDSA65PrivateKey.generate() for name in self.names}
        self.public_keys = {name: key.public_key().public_bytes_raw() for name, key in self.identities.items()}
        self.ends = {name: rp.RelayEndpoint(name, lambda link, name=name: self.neighbors.get((name, link)),
                                            sign=functools.partial(sign_settlement, self.identities[name]),
                                            identity_of=self.public_keys.get)
                     for name in self.names}
        # link -> {key_id: material}, one copy per end
        shared = {link: {str(uuid.uuid4()): os.urandom(KEY_BYTES) for _ in range(keys_per_link)}
                  for link in self.links}
        self.stores = {(name, link): dict(keys) for (name, link) in self.neighbors for keys in [shared[link]]}
        self.events: dict[str, list] = {name: [] for name in self.names}
        self.down: set[str] = set()

    def node_at(self, link: str, sender: str) -> str:
        return self.neighbors[(sender, link)]

    def take(self, name: str, link: str, ids=None) -> tuple[tuple[str, ...], bytes]:
        store = self.stores[(name, link)]
        ids = ids or (next(iter(store)),)
        return tuple(ids), b"".join(store.pop(key_id) for key_id in ids)

    def pump(self, sender: str, messages: list) -> None:
        queue = [(sender, m) for m in messages]
        while queue:
            at, item = queue.pop(0)
            if not isinstance(item, rp.Send):
                self.events[at].append(item)
                continue
            if item.link_id in self.down or (item.link_id, at) in self.down:
                continue
            to = self.node_at(item.link_id, at)
            for out in self.ends[to].receive(item.link_id, item.payload, 0.0):
                if isinstance(out, rp.ForwardReceived):
                    f = out.forward
                    _, up = self.take(to, out.via_link, f.key_ids)
                    if out.role == rp.DESTINATION:
                        sends = self.ends[to].arrive(f, out.via_link, up, 0.0)
                    else:
                        ids, down = self.take(to, f.links[f.hop + 1])
                        sends = self.ends[to].forward(f, out.via_link, up, ids, down, 0.0)
                    queue += [(to, s) for s in sends]
                    self.events[to].append(out)
                else:
                    queue.append((to, out))

    def start(self, bits: int = 256) -> tuple[str, bytearray]:
        relay_id = str(uuid.uuid4())
        ids, first = self.take("N0", "L0")
        key, sends = self.ends["N0"].start(relay_id, tuple(self.names), tuple(self.links), bits, ids, first, 0.0)
        self.pump("N0", sends)
        return relay_id, key

    def of(self, name: str, kind) -> list:
        return [e for e in self.events[name] if isinstance(e, kind)]


@pytest.mark.parametrize("hops", [1, 3, 5])
def test_relay_destination_gets_the_source_key_and_each_relay_uses_one_key_per_side(hops):
    chain = Chain(hops)
    relay_id, key = chain.start()
    ready = chain.of(chain.names[-1], rp.KeyReady)
    assert ready and ready[0].relay_id == relay_id and ready[0].key == bytes(key) and len(key) == 32
    assert chain.of("N0", rp.Delivered) == [rp.Delivered(relay_id)]
    for link in chain.links:          # one key consumed at both ends of every link
        assert all(len(chain.stores[(n, link)]) == 3 for n in chain.names if (n, link) in chain.stores)
    assert all(not end.requests for end in chain.ends.values())          # nobody holds state or key
    assert not any(chain.of(n, rp.Aborted) or chain.of(n, rp.Refused) for n in chain.names)


def test_relay_hop_dying_mid_relay_aborts_at_every_node_and_nothing_is_served():
    chain = Chain(4)
    relay_id = str(uuid.uuid4())
    ids, first = chain.take("N0", "L0")
    _, sends = chain.ends["N0"].start(relay_id, tuple(chain.names), tuple(chain.links), 256, ids, first, 0.0)
    chain.down.add("L3")                 # the last hop dies while the FORWARD travels
    chain.pump("N0", sends)
    assert chain.ends["N3"].requests and chain.ends["N0"].requests
    chain.pump("N3", chain.ends["N3"].link_down("L3"))
    for name in chain.names[:4]:
        assert [e.relay_id for e in chain.of(name, rp.Aborted)] == [relay_id], name
        assert not chain.ends[name].requests
    assert not chain.of("N0", rp.Delivered) and not chain.of("N4", rp.KeyReady)


def test_relay_destination_never_serves_before_the_source_commits():
    chain = Chain(2)
    relay_id = str(uuid.uuid4())
    ids, first = chain.take("N0", "L0")
    _, sends = chain.ends["N0"].start(relay_id, tuple(chain.names), tuple(chain.links), 128, ids, first, 0.0)
    chain.down.add(("L0", "N1"))        # the CONFIRM never reaches the source
    chain.pump("N0", sends)
    assert chain.ends["N2"].requests[relay_id].state is rp.State.CONFIRMING
    assert not chain.of("N2", rp.KeyReady)
    chain.pump("N2", chain.ends["N2"].expire(100.0))
    assert chain.of("N2", rp.Aborted) and not chain.ends["N2"].requests


def test_relay_refuses_replayed_misrouted_malformed_and_forged_messages():
    chain = Chain(2)
    relay_id = str(uuid.uuid4())
    ids, first = chain.take("N0", "L0")
    _, sends = chain.ends["N0"].start(relay_id, tuple(chain.names), tuple(chain.links), 256, ids, first, 0.0)
    forward = sends[0].payload
    relay = chain.ends["N1"]
    assert isinstance(relay.receive("L1", forward, 0.0)[0], rp.Refused)        # on the wrong link
    assert isinstance(relay.receive("L0", forward, 0.0)[0], rp.ForwardReceived)
    assert isinstance(relay.receive("L0", forward, 0.0)[0], rp.Refused)        # replayed
    for bad in (forward[:20], b"", b"\x07" + forward[1:], forward + b"x"):
        assert isinstance(relay.receive("L0", bad, 0.0)[0], rp.Refused)
    # a forged CONFIRM (wrong tag) at the source aborts the request instead of serving it
    bogus = rp.encode_tag(rp.MessageType.CONFIRM, relay_id, b"\x00" * 32)
    out = chain.ends["N0"].receive("L0", bogus, 0.0)
    assert any(isinstance(e, rp.Aborted) for e in out) and not chain.ends["N0"].requests
    # messages for unknown requests, DONE out of order
    assert isinstance(chain.ends["N0"].receive("L0", rp.encode_done(relay_id), 0.0)[0], rp.Refused)
    # a FORWARD naming another node as the previous hop
    f = rp.decode(forward)[2]
    spoofed = rp.encode_forward(rp.Forward(str(uuid.uuid4()), "N9", f.destination, f.bits, 0, ("N9", "N1", "N2"),
                                           f.links, f.key_ids, b""))
    assert isinstance(relay.receive("L0", spoofed, 0.0)[0], rp.Refused)


def test_relay_forward_encoding_round_trips_and_rejects_inconsistent_fields():
    rid = str(uuid.uuid4())
    f = rp.Forward(rid, "A", "C", 64, 1, ("A", "B", "C"), ("ab", "bc"), (str(uuid.uuid4()),), b"p" * 8, rid, 1)
    assert rp.decode(rp.encode_forward(f)) == (rp.MessageType.FORWARD, f.relay_id, f)
    shared = rp.Forward(rid, "A", "C", 64, 1, f.path, f.links, f.key_ids, b"p" * 8, str(uuid.uuid4()), 2)
    assert rp.decode(rp.encode_forward(shared))[2] == shared
    for broken in (rp.Forward(f.relay_id, "A", "C", 64, 1, f.path, f.links, f.key_ids, b""),     # pad missing
                   rp.Forward(f.relay_id, "A", "C", 64, 2, f.path, f.links, f.key_ids, b"p" * 8),  # hop past end
                   rp.Forward(f.relay_id, "X", "C", 64, 1, f.path, f.links, f.key_ids, b"p" * 8),   # ends
                   rp.Forward(rid, "A", "C", 64, 1, f.path, f.links, f.key_ids, b"p" * 8, str(uuid.uuid4()), 1),
                   rp.Forward(rid, "A", "C", 64, 1, f.path, f.links, f.key_ids, b"p" * 8, rid, 9)):  # shares
        with pytest.raises(rp.RelayWireError):
            rp.decode(rp.encode_forward(broken))


def test_relay_records_pack_and_unpack_and_refuse_bad_lengths():
    messages = [rp.encode_done(str(uuid.uuid4())) for _ in range(5)] + [b"x" * 1000]
    records = rp.pack(messages)
    assert len(records) == 1 and rp.unpack(records[0]) == messages
    big = [b"y" * (100 << 10)] * 5
    assert [m for r in rp.pack(big) for m in rp.unpack(r)] == big and len(rp.pack(big)) > 1
    for bad in (b"", b"\x00\x00\x00", b"\x00\x00\x00\x09abc", (1 << 30).to_bytes(4, "big") + b"z"):
        with pytest.raises(rp.RelayWireError):
            rp.unpack(bad)


def test_relay_multipath_shares_each_confirm_and_xor_to_the_key():
    chains = [Chain(2), Chain(3)]
    group = str(uuid.uuid4())
    keys = []
    for chain in chains:
        relay_id = str(uuid.uuid4())
        ids, first = chain.take("N0", "L0")
        key, sends = chain.ends["N0"].start(relay_id, tuple(chain.names), tuple(chain.links), 256, ids, first, 0.0,
                                            group=group, shares=2)
        chain.pump("N0", sends)
        ready = chain.of(chain.names[-1], rp.KeyReady)[0]
        assert (ready.group, ready.shares, ready.key) == (group, 2, bytes(key))
        keys.append(bytes(key))
    assert keys[0] != keys[1] and len(rp.xor(*keys)) == 32


def test_relay_rollback_travels_source_routed_both_ways_and_is_refused_off_its_route():
    chain = Chain(3)
    relay_id, group = str(uuid.uuid4()), str(uuid.uuid4())
    sends = chain.ends["N0"].rollback(relay_id, group, tuple(chain.names), tuple(chain.links))
    chain.pump("N0", sends)
    (rollback,) = chain.of("N3", rp.RollbackReceived)
    assert (rollback.settle.relay_id, rollback.settle.group, rollback.settle.path[0]) == (relay_id, group, "N0")
    assert not chain.of("N1", rp.RollbackReceived) and not chain.of("N2", rp.RollbackReceived)   # passed on only
    chain.pump("N3", chain.ends["N3"].rolled_back(rollback, rp.ERASED))
    assert chain.of("N0", rp.RolledBack) == [rp.RolledBack(relay_id, rp.ERASED)]
    # off its route: on a link the route does not name, or to a node that is not next on it
    payload = sends[0].payload
    assert isinstance(chain.ends["N1"].receive("L1", payload, 0.0)[0], rp.Refused)
    assert isinstance(chain.ends["N2"].receive("L0", payload, 0.0)[0], rp.Refused)
    settle = rp.decode(payload)[2]
    assert rp.decode(rp.encode_settle(rp.MessageType.ROLLBACK, settle))[2] == settle
    for bad in (payload[:30], payload + b"\x00"):      # truncated, trailing
        assert isinstance(chain.ends["N1"].receive("L0", bad, 0.0)[0], rp.Refused)
    outcome_at = len(payload) - 2 - len(settle.signature) - 8 - 1
    bad_outcome = payload[:outcome_at] + b"\x05" + payload[outcome_at + 1:]
    assert isinstance(chain.ends["N1"].receive("L0", bad_outcome, 0.0)[0], rp.Refused)


def test_relay_rollback_aborts_a_destination_still_confirming():
    chain = Chain(2)
    chain.down.add(("L1", "N2"))                   # the destination's CONFIRM never gets back
    relay_id, _ = chain.start()
    assert relay_id in chain.ends["N2"].requests
    chain.down.clear()
    chain.ends["N0"].requests.clear()              # the source forgot it (it was restarted)
    chain.pump("N0", chain.ends["N0"].rollback(relay_id, relay_id, tuple(chain.names), tuple(chain.links)))
    assert relay_id not in chain.ends["N2"].requests
    assert chain.of("N2", rp.Aborted)[0].reason == "rolled back by the source"
    assert chain.of("N2", rp.RollbackReceived)


def settle_for(path: tuple[str, ...], links: tuple[str, ...], relay_id: str, hop: int) -> rp.Settle:
    """An unsigned ROLLBACK along `path`, as it arrives at `hop`."""
    return rp.Settle(relay_id, relay_id, hop, path, links, 0, int(time.time() * 1000))


def test_relay_settlement_is_signed_end_to_end_so_a_relay_cannot_forge_or_replay_it():
    """A relay on the route (N2) cannot roll a request back in the source's name, nor answer a rollback
    in the destination's: the addressee verifies its sender's ML-DSA-65 signature (the key the link-state
    database holds for it) and refuses a forged, altered, unsigned, replayed, old or unknown sender's one."""
    chain = Chain(3)
    names, links = tuple(chain.names), tuple(chain.links)
    relay_id, victim = str(uuid.uuid4()), str(uuid.uuid4())
    genuine = rp.decode(chain.ends["N0"].rollback(relay_id, relay_id, names, links)[0].payload)[2]
    last_hop = dataclasses.replace(genuine, hop=2)              # as N2 passes it to the destination N3

    def signed(kind, settle, signer: str, **changes):
        settle = dataclasses.replace(settle, **changes)
        body = rp.settlement_signed_part(kind, settle)
        return dataclasses.replace(settle, signature=sign_settlement(chain.identities[signer], body))

    def at(node: str, via: str, kind, settle) -> list:
        return chain.ends[node].receive(via, rp.encode_settle(kind, settle), 0.0)

    def refused(events, why: str) -> bool:
        return len(events) == 1 and isinstance(events[0], rp.Refused) and why in events[0].reason

    rollback, rolled_back = rp.MessageType.ROLLBACK, rp.MessageType.ROLLED_BACK
    forged = signed(rollback, last_hop, "N2", relay_id=victim, group=victim)        # N2's key, N0's name
    assert refused(at("N3", "L2", rollback, forged), "does not verify")
    altered = dataclasses.replace(last_hop, relay_id=victim, group=victim)           # N0's signature, other key
    assert refused(at("N3", "L2", rollback, altered), "does not verify")
    assert refused(at("N3", "L2", rollback, dataclasses.replace(last_hop, signature=b"")), "does not verify")
    later = dataclasses.replace(last_hop, signed_at_ms=last_hop.signed_at_ms + 1)    # its time moved on
    assert refused(at("N3", "L2", rollback, later), "does not verify")
    old = signed(rollback, last_hop, "N0", signed_at_ms=last_hop.signed_at_ms - int(rp.MAX_SETTLE_AGE_S * 1000) - 1000)
    assert refused(at("N3", "L2", rollback, old), "outside the accepted age")
    stranger = signed(rollback, settle_for(("N9", "N2", "N3"), ("L9", "L2"), victim, hop=1), "N2")
    assert refused(at("N3", "L2", rollback, stranger), "identity is not known")
    assert not any(chain.of(name, rp.RollbackReceived) for name in names)            # nothing rolled back

    accepted = at("N3", "L2", rollback, last_hop)
    assert [type(e) for e in accepted] == [rp.RollbackReceived] and accepted[0].settle.relay_id == relay_id
    assert refused(at("N3", "L2", rollback, last_hop), "replayed")                   # the same bytes again
    resent = rp.decode(chain.ends["N0"].rollback(relay_id, relay_id, names, links)[0].payload)[2]
    if resent.signed_at_ms == last_hop.signed_at_ms:                                # within the same millisecond
        resent = signed(rollback, resent, "N0", signed_at_ms=resent.signed_at_ms + 1)
    assert isinstance(at("N3", "L2", rollback, dataclasses.replace(resent, hop=2))[0], rp.RollbackReceived)

    # the answer: N1 cannot tell the source the destination erased the key
    answer = rp.decode(chain.ends["N3"].rolled_back(accepted[0], rp.ERASED)[0].payload)[2]
    forged_answer = signed(rolled_back, dataclasses.replace(answer, hop=2), "N1")
    assert refused(at("N0", "L0", rolled_back, forged_answer), "does not verify")
    assert at("N0", "L0", rolled_back, dataclasses.replace(answer, hop=2)) == [rp.RolledBack(relay_id, rp.ERASED)]
    assert refused(at("N0", "L0", rolled_back, dataclasses.replace(answer, hop=2)), "replayed")

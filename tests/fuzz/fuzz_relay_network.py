"""Fuzz target: what a neighbour sends on the relay network's two channels (qkdd.relay): a record of relay
messages to node-c, which has a request of its own in flight as source and one as destination, or a
link-state announcement to node-c's database. The first byte picks the channel (even: relay record, odd:
announcement), the rest is the payload.

Expected, relay: `unpack` takes the record or raises RelayWireError; `receive` never raises; a decoded
message encodes back to the same bytes; no key is ready or delivered without its confirmation tag; a
FORWARD, ROLLBACK or ROLLED_BACK is taken at most once and only when it names this node, a settlement only
under its sender's genuine signature; no refusal quotes key material.
Expected, link state: `receive` never raises; an accepted announcement verifies under its own key, and the
same bytes again are not accepted.
"""
from __future__ import annotations

from tests.fuzz._common import Finding, check_silent, fuzz, instrumented

with instrumented():
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import mldsa

    from qkdd.relay import linkstate
    from qkdd.relay import protocol as rp
    from qkdd.relay.wire import RelayWireError

WALL_S = 1_800_000_000.0                       # every clock of the target: seeds signed now still verify
KEYS = {node: mldsa.MLDSA65PrivateKey.from_seed_bytes(bytes([n]) * 32)
        for n, node in enumerate(("node-a", "node-b", "node-c", "node-d"), start=1)}
PUBLIC = {node: key.public_key().public_bytes_raw() for node, key in KEYS.items()}
NEIGHBORS = {"link-bc": "node-b", "link-cd": "node-d"}
SOURCE_ID = "00000000-0000-4000-8000-0000000000c1"        # node-c -> node-d -> node-e, awaiting CONFIRM
DESTINATION_ID = "00000000-0000-4000-8000-0000000000a1"   # node-a -> node-b -> node-c, awaiting COMMIT
SOURCE_KEY, DESTINATION_KEY = bytes(range(32, 64)), bytes(range(64, 96))
ARRIVED = rp.Forward(DESTINATION_ID, "node-a", "node-c", 256, 1, ("node-a", "node-b", "node-c"),
                     ("link-ab", "link-bc"), ("00000000-0000-4000-8000-00000000000b",), bytes(32))


def _endpoint() -> rp.RelayEndpoint:
    endpoint = rp.RelayEndpoint("node-c", NEIGHBORS.get, sign=lambda body: KEYS["node-c"].sign(
        body, rp.SETTLE_SIGNATURE_CONTEXT), identity_of=PUBLIC.get, wall_clock=lambda: WALL_S)
    endpoint.start(SOURCE_ID, ("node-c", "node-d", "node-e"), ("link-cd", "link-de"), 256,
                   ("00000000-0000-4000-8000-00000000000c",), SOURCE_KEY, 0.0)
    endpoint.arrive(ARRIVED, "link-bc", DESTINATION_KEY, 0.0)
    return endpoint


def _encoded_again(kind: rp.MessageType, relay_id: str, body: object) -> bytes | None:
    """The one encoding of a decoded message (None for ABORT, whose reason decodes with replacement)."""
    if kind is rp.MessageType.FORWARD:
        return rp.encode_forward(body)
    if kind in (rp.MessageType.CONFIRM, rp.MessageType.COMMIT):
        return rp.encode_tag(kind, relay_id, body)
    if kind in (rp.MessageType.DONE, rp.MessageType.KEYS_ERASED):
        return rp.encode_done(relay_id) if kind is rp.MessageType.DONE else rp.encode_keys_erased(relay_id)
    if kind in (rp.MessageType.ROLLBACK, rp.MessageType.ROLLED_BACK):
        return rp.encode_settle(kind, body)
    if kind is rp.MessageType.ERASE_KEYS:
        return rp.encode_erase_keys(relay_id, body)
    return None


def _genuine(kind: rp.MessageType, settle: rp.Settle) -> bool:
    try:
        mldsa.MLDSA65PublicKey.from_public_bytes(PUBLIC[settle.path[0]]).verify(
            settle.signature, rp.settlement_signed_part(kind, settle), rp.SETTLE_SIGNATURE_CONTEXT)
    except (InvalidSignature, KeyError, ValueError):
        return False
    return True


def _check_events(message: bytes, events: list, states: dict, taken: set) -> None:
    try:
        kind, relay_id, body = rp.decode(message)
    except RelayWireError:
        if any(not isinstance(event, rp.Refused) for event in events):
            raise Finding(f"a malformed message was taken: {events!r}") from None
        return
    again = _encoded_again(kind, relay_id, body)
    if again is not None and again != message:
        raise Finding(f"{kind.name} decoded from bytes that are not its encoding")
    for event in events:
        if isinstance(event, rp.Refused):
            check_silent(event.reason, (SOURCE_KEY, DESTINATION_KEY), "a refusal")
        elif isinstance(event, rp.KeyReady):
            wanted = rp.confirmation_tag(DESTINATION_KEY, "src", DESTINATION_ID, "node-a", "node-c", 256)
            if kind is not rp.MessageType.COMMIT or body != wanted:
                raise Finding("a key was made ready without the source's confirmation tag")
        elif isinstance(event, rp.Delivered):
            if states.get(event.relay_id) is not rp.State.COMMITTED:
                raise Finding("a key was delivered before the destination confirmed it")
        elif isinstance(event, (rp.ForwardReceived, rp.RollbackReceived, rp.RolledBack)):
            if isinstance(event, rp.ForwardReceived):
                f = event.forward
                once, addressee = (kind, f.relay_id), f.path[f.hop + 1]
            else:
                s = body
                once, addressee = (kind, s.relay_id, s.signed_at_ms), s.path[-1]
                if not _genuine(kind, s):
                    raise Finding(f"{kind.name} taken without its sender's signature")
            if addressee != "node-c" or once in taken:
                raise Finding(f"{kind.name} taken twice or for another node")
            taken.add(once)


def _relay(record: bytes) -> None:
    try:
        messages = rp.unpack(record)
    except RelayWireError:
        return
    endpoint, taken = _endpoint(), set()
    for _ in range(2):                                  # the second pass is a replay of every message
        for message in messages:
            states = {relay_id: request.state for relay_id, request in endpoint.requests.items()}
            for link in ("link-bc", "link-cd"):
                _check_events(message, endpoint.receive(link, message, 1.0), states, taken)


def _announcement(payload: bytes) -> None:
    db = linkstate.LinkStateDatabase("node-c", PUBLIC["node-c"])
    db.pin("link-bc", linkstate.fingerprint(PUBLIC["node-b"]))
    for now_s in (1.0, 2.0):
        received = db.receive(payload, "link-bc", now_s, WALL_S)
        if received.refusal is not None and received.refusal not in linkstate.REFUSALS:
            raise Finding(f"unknown refusal {received.refusal!r}")
        if received.accepted:
            if now_s == 2.0:
                raise Finding("the same announcement was accepted twice")
            announcement, signed, signature = linkstate.decode(payload)
            mldsa.MLDSA65PublicKey.from_public_bytes(announcement.public_key).verify(
                signature, signed, linkstate.SIGNATURE_CONTEXT)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    (_relay if data[0] % 2 == 0 else _announcement)(data[1:])


def _signed_settle(kind: rp.MessageType, signer: str, path: tuple[str, ...], links: tuple[str, ...],
                   outcome: int = 0) -> bytes:
    settle = rp.Settle("00000000-0000-4000-8000-0000000000d1", "00000000-0000-4000-8000-0000000000d1", len(links) - 1,
                       path, links, outcome, int(WALL_S * 1000))
    signature = KEYS[signer].sign(rp.settlement_signed_part(kind, settle), rp.SETTLE_SIGNATURE_CONTEXT)
    return rp.encode_settle(kind, rp.Settle(settle.relay_id, settle.group, settle.hop, path, links, outcome,
                                            settle.signed_at_ms, signature))


def _announced(origin: str, neighbor: str, link_id: str) -> bytes:
    report = linkstate.LinkReport(neighbor, link_id, linkstate.fingerprint(PUBLIC[neighbor]), 1 << 20, 5e4, 0.02)
    return linkstate.Announcement(origin, int(WALL_S * 1000), 3, PUBLIC[origin], (report,)).sign(KEYS[origin])


def seeds() -> list[bytes]:
    new_forward = rp.encode_forward(rp.Forward(
        "00000000-0000-4000-8000-0000000000e1", "node-b", "node-c", 256, 0, ("node-b", "node-c"), ("link-bc",),
        ("00000000-0000-4000-8000-00000000000e",), b""))
    rollback = _signed_settle(rp.MessageType.ROLLBACK, "node-a", ("node-a", "node-b", "node-c"),
                              ("link-ab", "link-bc"))
    rolled_back = _signed_settle(rp.MessageType.ROLLED_BACK, "node-d", ("node-d", "node-c"), ("link-cd",), rp.ERASED)
    wrong_confirm = rp.encode_tag(rp.MessageType.CONFIRM, SOURCE_ID, bytes(32))
    erase = rp.encode_erase_keys(SOURCE_ID, ("00000000-0000-4000-8000-00000000000c",))
    relay_records = [rp.pack([new_forward, rollback])[0], rp.pack([rolled_back, wrong_confirm, erase])[0],
                     rp.pack([rp.encode_abort(DESTINATION_ID, "gone"), rp.encode_done(SOURCE_ID)])[0]]
    announcements = [_announced("node-b", "node-c", "link-bc"), _announced("node-a", "node-b", "link-ab")]
    return [b"\x00" + record for record in relay_records] + [b"\x01" + payload for payload in announcements]


if __name__ == "__main__":
    fuzz(TestOneInput)

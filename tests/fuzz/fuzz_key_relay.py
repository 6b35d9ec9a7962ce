"""Fuzz target: a key-relay message from the peer (qkdd.link.key_relay_messages: vendor KME key IDs of
links with driver "etsi014"), decoded, and answered to a master end awaiting batch 7.

Expected: a Message or a RelayProtocolError; a decoded message encodes back to the same bytes (one
encoding per message); the master takes only an ACCEPT or REFUSE of its batch, and a refused message
leaves it awaiting.
"""
from __future__ import annotations

from tests.fuzz._common import Finding, fuzz, instrumented

with instrumented():
    from qkdd.link import key_relay_messages as relay


def TestOneInput(data: bytes) -> None:
    try:
        message = relay.decode(data)
    except relay.RelayProtocolError:
        message = None
    if message is not None and relay.encode(message) != data:
        raise Finding("a message decodes from bytes it does not encode to")
    master = relay.MasterRelay()
    master.offer(7, ["k-1"])
    try:
        answer = master.answer(data)
    except relay.RelayProtocolError:
        if master.state is not relay.State.AWAITING or master.batch_id != 7:
            raise Finding("a refused answer changed the master's state") from None
        return
    if answer.batch_id != 7 or answer.kind is relay.Kind.OFFER or master.state is not relay.State.IDLE:
        raise Finding(f"the master took {answer!r}")


def seeds() -> list[bytes]:
    return [relay.encode(relay.Message(relay.Kind.OFFER, 7, ("a1b2", "c3d4"))),
            relay.encode(relay.Message(relay.Kind.ACCEPT, 7)),
            relay.encode(relay.Message(relay.Kind.REFUSE, 7, reason="KME down"))]


if __name__ == "__main__":
    fuzz(TestOneInput)

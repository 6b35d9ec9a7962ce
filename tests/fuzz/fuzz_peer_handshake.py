"""Fuzz target: what an unauthenticated peer sends during the handshake. The bytes go through the frame
decoder (records refused) to a responder and to an initiator that has said hello, each until it fails.

Expected: a FrameError, or a HandshakeError after which the end is FAILED holding no secret (no session
keys, hybrid secret, ephemeral keys or confirmation tag) with an alert code to send. Nothing signed by a key
other than the pinned one gets through, so no end ever reaches ESTABLISHED.
"""
from __future__ import annotations

from tests.fuzz._common import Finding, fuzz, instrumented

with instrumented():
    from cryptography.hazmat.primitives.asymmetric import mldsa

    from qkdd.peer.errors import FrameError, HandshakeError
    from qkdd.peer.framing import Frame, FrameDecoder, FrameType
    from qkdd.peer.handshake import Alert, Handshake, Role, State, alert_frame

LINK_ID = "link-ab"
# Fixed identities, so that the seed corpus names the fingerprints these ends pin.
ALICE = mldsa.MLDSA65PrivateKey.from_seed_bytes(bytes(range(32)))          # the initiator
BOB = mldsa.MLDSA65PrivateKey.from_seed_bytes(bytes(range(1, 33)))         # the responder
ALICE_PUBLIC, BOB_PUBLIC = ALICE.public_key(), BOB.public_key()
_REPLY = {Role.RESPONDER: {FrameType.INITIATOR_HELLO: FrameType.RESPONDER_HELLO,
                           FrameType.INITIATOR_FINISH: FrameType.RESPONDER_FINISH},
          Role.INITIATOR: {FrameType.RESPONDER_HELLO: FrameType.INITIATOR_FINISH}}


def _check_failed(end: Handshake, error: HandshakeError) -> None:
    if error.alert not in set(Alert) or end.state is not State.FAILED or end.keys is not None:
        raise Finding(f"{end!r} after {error!r}: alert {error.alert}, keys {end.keys is not None}")
    if (end._shared, end._mlkem, end._x25519, end._confirm) != (None, None, None, b""):
        raise Finding(f"{end!r} holds a secret after it failed: {error}")


def _deliver(end: Handshake, frame: Frame) -> bool:
    """Give `frame` to `end`; False once the end failed."""
    try:
        replies = end.receive(frame)
    except HandshakeError as error:
        _check_failed(end, error)
        return False
    if end.established:
        raise Finding(f"{end!r} established with a peer that holds no pinned key")
    if [reply.type for reply in replies] != [_REPLY[end.role][frame.type]]:
        raise Finding(f"{end!r} answered {frame.type.name} with {[reply.type.name for reply in replies]}")
    return True


def TestOneInput(data: bytes) -> None:
    responder = Handshake(Role.RESPONDER, LINK_ID, BOB, ALICE_PUBLIC)
    responder.start()
    initiator = Handshake(Role.INITIATOR, LINK_ID, ALICE, BOB_PUBLIC)
    initiator.start()
    alive = {responder, initiator}
    decoder = FrameDecoder(accept_records=False)
    half = len(data) // 2
    try:
        for piece in (data[:half], data[half:], b""):
            decoder.receive_data(piece)
            while alive and (frame := decoder.next_frame()) is not None:
                for end in list(alive):
                    if not _deliver(end, frame):
                        alive.discard(end)
    except FrameError:
        return


def seeds() -> list[bytes]:
    initiator = Handshake(Role.INITIATOR, LINK_ID, ALICE, BOB_PUBLIC)
    responder = Handshake(Role.RESPONDER, LINK_ID, BOB, ALICE_PUBLIC)
    responder.start()
    (hello,) = initiator.start()
    (responder_hello,) = responder.receive(hello)
    (finish,) = initiator.receive(responder_hello)
    (responder_finish,) = responder.receive(finish)
    initiator.receive(responder_finish)
    return [hello.to_bytes(), hello.to_bytes() + finish.to_bytes(), responder_hello.to_bytes(),
            responder_hello.to_bytes() + responder_finish.to_bytes(), alert_frame(Alert.BAD_SIGNATURE).to_bytes()]


if __name__ == "__main__":
    fuzz(TestOneInput)

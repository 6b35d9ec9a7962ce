"""The classical-channel handshake, sans-IO: both ends in memory, byte for byte, and its refusals."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from qkdd.peer import generate_identity
from qkdd.peer.errors import FrameError, HandshakeError, PeerAuthenticationError, PeerRefusedError
from qkdd.peer.framing import Frame, FrameDecoder, FrameType
from qkdd.peer.handshake import PROTOCOL_VERSION, Alert, Handshake, Role, State, TRANSITIONS, alert_frame
from qkdd.peer.identity import key_fingerprint
from tests.mutations import edited, fields

ALICE, BOB, MALLORY = generate_identity(), generate_identity(), generate_identity()


def pair(link_i="link-ab", link_r="link-ab", i_pins=None, r_pins=None):
    initiator = Handshake(Role.INITIATOR, link_i, ALICE, i_pins or BOB.public_key())
    responder = Handshake(Role.RESPONDER, link_r, BOB, r_pins or ALICE.public_key())
    return initiator, responder


def over_the_wire(frames: list[Frame]) -> list[Frame]:
    """Serialise frames to bytes and parse them back one byte at a time, as a stream would deliver."""
    decoder = FrameDecoder()
    received = []
    for byte in b"".join(frame.to_bytes() for frame in frames):
        decoder.receive_data(bytes([byte]))
        while (frame := decoder.next_frame()) is not None:
            received.append(frame)
    return received


def deliver(frames, to: Handshake) -> list[Frame]:
    out = []
    for frame in over_the_wire(frames):
        out += to.receive(frame)
    return out


def run_to_completion(initiator, responder, rewrite=lambda frame: frame):
    assert responder.start() == []
    to_responder = initiator.start()
    flights = []
    while to_responder:
        flights.append([f.type for f in to_responder])
        to_initiator = deliver([rewrite(f) for f in to_responder], responder)
        flights.append([f.type for f in to_initiator])
        to_responder = deliver([rewrite(f) for f in to_initiator], initiator)
    return flights


def test_both_ends_agree_on_direction_keys_byte_for_byte():
    initiator, responder = pair()
    flights = run_to_completion(initiator, responder)
    assert flights == [[FrameType.INITIATOR_HELLO], [FrameType.RESPONDER_HELLO],
                       [FrameType.INITIATOR_FINISH], [FrameType.RESPONDER_FINISH]]
    assert initiator.state is State.ESTABLISHED and responder.state is State.ESTABLISHED
    i_keys, r_keys = initiator.keys, responder.keys
    assert i_keys.send_key == r_keys.receive_key and i_keys.receive_key == r_keys.send_key
    assert i_keys.send_key != i_keys.receive_key and len(i_keys.send_key) == 32
    assert i_keys.session_id == r_keys.session_id
    assert "send_key" not in repr(i_keys) and i_keys.send_key.hex() not in repr(i_keys)


def test_every_session_has_fresh_keys():
    first, second = pair(), pair()
    run_to_completion(*first)
    run_to_completion(*second)
    assert first[0].keys.send_key != second[0].keys.send_key
    assert first[0].keys.session_id != second[0].keys.session_id


def test_transition_table_covers_both_roles_to_established():
    for role in Role:
        state, steps = State.IDLE, 0
        while state is not State.ESTABLISHED:
            (event, state), = [(e, s) for (r, st, e), s in TRANSITIONS.items() if r is role and st is state]
            steps += 1
        assert steps == 3


def test_initiator_refuses_a_responder_that_is_not_the_pinned_key():
    initiator, responder = pair(i_pins=MALLORY.public_key())
    initiator_hello = initiator.start()
    responder.start()
    reply = deliver(initiator_hello, responder)
    with pytest.raises(PeerAuthenticationError) as refused:
        deliver(reply, initiator)
    assert refused.value.alert == Alert.UNKNOWN_KEY
    assert "pins sha256:" in str(refused.value) and "peer refused" in str(refused.value)
    assert initiator.state is State.FAILED and initiator.keys is None
    # The responder hears the alert and fails too, naming the reason.
    with pytest.raises(PeerRefusedError, match="unknown key"):
        deliver([alert_frame(refused.value.alert)], responder)
    assert responder.keys is None


def test_responder_refuses_an_initiator_that_is_not_the_pinned_key():
    initiator, responder = pair(r_pins=MALLORY.public_key())
    responder.start()
    with pytest.raises(PeerAuthenticationError, match="peer refused") as refused:
        deliver(initiator.start(), responder)
    assert refused.value.alert == Alert.UNKNOWN_KEY
    with pytest.raises(PeerRefusedError, match="unknown key"):
        deliver([alert_frame(refused.value.alert)], initiator)


def impostor(role: Role, victim) -> Handshake:
    """Mallory claims the victim's fingerprint but can only sign with her own key."""
    peer_key = BOB.public_key() if role is Role.INITIATOR else ALICE.public_key()
    handshake = Handshake(role, "link-ab", MALLORY, peer_key)
    handshake._own_fp = key_fingerprint(victim.public_key())
    return handshake


def test_impostor_with_the_pinned_fingerprint_fails_the_signature_check_on_both_sides():
    responder = Handshake(Role.RESPONDER, "link-ab", BOB, ALICE.public_key())
    responder.start()
    fake_alice = impostor(Role.INITIATOR, ALICE)
    reply = deliver(fake_alice.start(), responder)
    finish = deliver(reply, fake_alice)
    with pytest.raises(PeerAuthenticationError, match="signature does not verify") as refused:
        deliver(finish, responder)
    assert refused.value.alert == Alert.BAD_SIGNATURE and responder.keys is None

    initiator = Handshake(Role.INITIATOR, "link-ab", ALICE, BOB.public_key())
    fake_bob = impostor(Role.RESPONDER, BOB)
    fake_bob.start()
    reply = deliver(initiator.start(), fake_bob)
    with pytest.raises(PeerAuthenticationError, match="signature does not verify"):
        deliver(reply, initiator)


def flip_byte_in(frame_type: FrameType, offset_from_end: int):
    def rewrite(frame: Frame) -> Frame:
        if frame.type is not frame_type:
            return frame
        body = bytearray(frame.body)
        body[-offset_from_end] ^= 0x01
        return Frame(frame.type, bytes(body))
    return rewrite


@pytest.mark.parametrize("frame_type, offset_from_end, error", [
    # the initiator's ML-KEM key, as the responder sees it: the responder signs the altered transcript
    (FrameType.INITIATOR_HELLO, 5, "RESPONDER_HELLO: signature does not verify"),
    # the initiator's X25519 share
    (FrameType.INITIATOR_HELLO, 1184 + 2 + 10, "RESPONDER_HELLO: signature does not verify"),
    # the responder's ML-KEM ciphertext
    (FrameType.RESPONDER_HELLO, 3309 + 2 + 20, "RESPONDER_HELLO: signature does not verify"),
    # the responder's signature itself
    (FrameType.RESPONDER_HELLO, 100, "RESPONDER_HELLO: signature does not verify"),
    # the initiator's signature
    (FrameType.INITIATOR_FINISH, 7, "INITIATOR_FINISH: signature does not verify"),
    # the key confirmation
    (FrameType.RESPONDER_FINISH, 1, "RESPONDER_FINISH: key confirmation failed"),
])
def test_tampered_transcript_is_refused(frame_type, offset_from_end, error):
    initiator, responder = pair()
    with pytest.raises(HandshakeError, match=error):
        run_to_completion(initiator, responder, flip_byte_in(frame_type, offset_from_end))
    assert initiator.keys is None or responder.keys is None
    assert State.FAILED in (initiator.state, responder.state)


def test_wrong_link_and_version_are_refused_with_their_alerts():
    initiator, responder = pair(link_i="link-ab", link_r="link-ac")
    responder.start()
    with pytest.raises(HandshakeError, match="link 'link-ab'.*link-ac") as wrong_link:
        deliver(initiator.start(), responder)
    assert wrong_link.value.alert == Alert.WRONG_LINK

    initiator, responder = pair()
    responder.start()
    hello = initiator.start()[0]
    body = bytearray(hello.body)
    body[2] = PROTOCOL_VERSION + 1  # the version field (after its 2-byte length)
    with pytest.raises(HandshakeError, match=f"protocol version {PROTOCOL_VERSION + 1}") as wrong_version:
        responder.receive(Frame(hello.type, bytes(body)))
    assert wrong_version.value.alert == Alert.UNSUPPORTED_VERSION


@pytest.mark.parametrize("body", [b"", b"\x00\x01", b"\x00\x01\x01" + b"\x00" * 10, b"\xff" * 40])
def test_malformed_hello_is_a_decode_error(body):
    responder = Handshake(Role.RESPONDER, "link-ab", BOB, ALICE.public_key())
    responder.start()
    with pytest.raises(HandshakeError) as error:
        responder.receive(Frame(FrameType.INITIATOR_HELLO, body))
    assert error.value.alert == Alert.DECODE_ERROR and responder.state is State.FAILED


def test_out_of_order_messages_are_refused():
    initiator, responder = pair()
    responder.start()
    with pytest.raises(HandshakeError,
                       match="unexpected INITIATOR_FINISH in state await-initiator-hello") as error:
        responder.receive(Frame(FrameType.INITIATOR_FINISH, b""))
    assert error.value.alert == Alert.UNEXPECTED_MESSAGE
    initiator.start()
    with pytest.raises(HandshakeError, match="unexpected INITIATOR_HELLO"):
        initiator.receive(Frame(FrameType.INITIATOR_HELLO, b""))
    with pytest.raises(HandshakeError, match="in state failed"):
        initiator.receive(Frame(FrameType.RESPONDER_HELLO, b""))
    established = pair()
    run_to_completion(*established)
    with pytest.raises(HandshakeError, match="in state established"):
        established[1].receive(Frame(FrameType.INITIATOR_HELLO, b""))


def test_reflected_hello_is_refused():
    """A responder's own hello sent back to it, or an initiator's to itself, never verifies."""
    initiator, responder = pair()
    responder.start()
    hello = initiator.start()
    with pytest.raises(HandshakeError, match="unexpected INITIATOR_HELLO"):
        deliver(hello, initiator)


def test_key_schedule_is_rfc5869_hkdf_sha384_over_the_hybrid_secret():
    """The session keys equal HKDF-SHA-384 (cryptography's RFC 5869 implementation as the reference)
    with salt = transcript hash and IKM = ss_MLKEM || ss_X25519; directions get different labels."""
    import hashlib
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    from qkdd.peer.handshake import LABEL_I_TO_R, LABEL_R_TO_I

    ss_mlkem, ss_x25519 = bytes(range(32)), bytes(range(100, 132))
    transcript = [b"initiator hello", b"responder hello", b"initiator finish"]
    derived = {}
    for role in Role:
        handshake = Handshake(role, "link-ab", ALICE, BOB.public_key())
        handshake._shared, handshake._transcript = ss_mlkem + ss_x25519, list(transcript)
        handshake._derive()
        handshake.state = State.ESTABLISHED
        derived[role] = handshake.keys
    salt = hashlib.sha384(b"".join(transcript)).digest()

    def reference(label):
        return HKDF(hashes.SHA384(), 32, salt=salt, info=label).derive(ss_mlkem + ss_x25519)

    assert derived[Role.INITIATOR].send_key == reference(LABEL_I_TO_R) == derived[Role.RESPONDER].receive_key
    assert derived[Role.RESPONDER].send_key == reference(LABEL_R_TO_I) == derived[Role.INITIATOR].receive_key


@pytest.mark.parametrize("failure", ["peer-alert", "bad-confirmation"])
def test_a_failed_handshake_holds_no_secret(failure):
    initiator, responder = pair()
    responder.start()
    finish = deliver(deliver(initiator.start(), responder), initiator)   # initiator has derived its keys
    assert initiator._keys is not None and initiator._confirm
    if failure == "peer-alert":
        with pytest.raises(PeerRefusedError):
            initiator.receive(alert_frame(Alert.BAD_SIGNATURE))
    else:
        [confirmation] = deliver(finish, responder)
        with pytest.raises(HandshakeError, match="key confirmation failed"):
            initiator.receive(Frame(confirmation.type, confirmation.body[:-1] + bytes([confirmation.body[-1] ^ 1])))
    assert initiator.state is State.FAILED and initiator.keys is None
    assert (initiator._keys, initiator._confirm, initiator._shared, initiator._mlkem, initiator._x25519) == \
        (None, b"", None, None, None)


# ---- any network client: arbitrary frames before authentication ----------------------------------------

def ends_awaiting(frame_type: FrameType) -> tuple[Handshake, Frame]:
    """A fresh pair run up to the end that expects `frame_type`, and the genuine frame of that type."""
    initiator, responder = pair()
    responder.start()
    flight = initiator.start()
    receiver = responder
    while flight[0].type != frame_type:
        flight = receiver.receive(flight[0])
        receiver = initiator if receiver is responder else responder
    return receiver, flight[0]


def mangled_body(body: bytes):
    # a cut anywhere, or a field length prefix set to an edge value
    return edited(body, max_cut=2000, max_insert=8, overwrites=fields([0, 1, 255, 256, 0xFFFF], 2, "big"))


HANDSHAKE_FRAMES = [FrameType.INITIATOR_HELLO, FrameType.RESPONDER_HELLO, FrameType.INITIATOR_FINISH,
                    FrameType.RESPONDER_FINISH]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(HANDSHAKE_FRAMES), st.data())
def test_a_mangled_handshake_frame_fails_the_handshake_with_an_alert_and_no_secret(frame_type, data):
    receiver, genuine = ends_awaiting(frame_type)
    body = data.draw(st.one_of(mangled_body(genuine.body), st.binary(max_size=300)))
    sent_type = data.draw(st.sampled_from([frame_type] * 3 + HANDSHAKE_FRAMES + [FrameType.ALERT]))
    try:
        replies = receiver.receive(Frame(sent_type, body))
    except HandshakeError as error:
        assert error.alert in set(Alert) and receiver.state is State.FAILED and receiver.keys is None
        assert (receiver._shared, receiver._mlkem, receiver._x25519, receiver._confirm) == (None, None, None, b"")
        return
    # besides the genuine frame, only a change that no check here can see passes: in the nonce or a key share
    # of the (unsigned) INITIATOR_HELLO, which the initiator's signature check refuses later
    assert sent_type == frame_type
    assert body == genuine.body or (frame_type == FrameType.INITIATOR_HELLO and len(body) == len(genuine.body))
    assert receiver.state in (State.AWAIT_INITIATOR_FINISH, State.AWAIT_RESPONDER_FINISH, State.ESTABLISHED)
    assert len(replies) <= 1


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64), st.sampled_from(HANDSHAKE_FRAMES + [FrameType.ALERT, FrameType.DATA]),
       st.integers(0, 20_000), st.integers(1, 4096))
def test_any_bytes_a_client_sends_the_responder_end_in_a_frame_or_handshake_error(junk, frame_type, length,
                                                                                   chunk_bytes):
    """What session.establish does with the bytes of an unauthenticated client, over a header that names any
    frame type and length followed by junk: a FrameError or HandshakeError, never another exception."""
    header = b"QKDP" + bytes([1, int(frame_type)]) + length.to_bytes(4, "big")
    for stream in (junk, header + junk, header + bytes(min(length, 17_000)) + junk):
        decoder = FrameDecoder(accept_records=False)
        responder = Handshake(Role.RESPONDER, "link-ab", BOB, ALICE.public_key())
        responder.start()
        try:
            for start in range(0, len(stream), chunk_bytes):
                decoder.receive_data(stream[start:start + chunk_bytes])
                while (frame := decoder.next_frame()) is not None:
                    responder.receive(frame)
        except (FrameError, HandshakeError):
            continue

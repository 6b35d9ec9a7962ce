"""Authenticated key exchange of the classical channel (sans-IO): frames in, frames out, session keys.

Theory of operation
-------------------
The two ends of a link meet as INITIATOR (the end that dials) and RESPONDER (the end that listens). Both
hold an ML-DSA-65 signing key (FIPS 204) and pin the other end's public key from config; TLS underneath is
unauthenticated and only hides metadata, so everything rests on this exchange:

    INITIATOR_HELLO   I -> R   version, link id, nonce_I, fingerprint of I's key, X25519 share X_I,
                               fresh ML-KEM-768 encapsulation key ek_I
    RESPONDER_HELLO   R -> I   version, link id, nonce_R, fingerprint of R's key, X25519 share X_R,
                               ML-KEM ciphertext ct = Encaps(ek_I), and
                               sig_R = ML-DSA-65.Sign(sk_R, SHA-384(T1 || R_HELLO body before sig_R),
                                                      ctx="qkdd-peer/1 responder")
    INITIATOR_FINISH  I -> R   sig_I = ML-DSA-65.Sign(sk_I, SHA-384(T1 || R_HELLO), ctx="qkdd-peer/1 initiator")
    RESPONDER_FINISH  R -> I   HMAC-SHA-384(confirm key, TH) (key confirmation: R derived the same keys)

T1 is the INITIATOR_HELLO frame and TH = SHA-384(INITIATOR_HELLO || RESPONDER_HELLO || INITIATOR_FINISH),
each as the exact frame bytes (header included, so the frame types, which name the roles, are bound).
Each signature covers both nonces, the link id, the versions and both key shares, so a signature cannot
be replayed into another session, link or role (the two contexts differ); a key share changed in
flight breaks the other end's signature check. A signature that does not verify under the pinned key
refuses the peer (PeerAuthenticationError) with the fingerprints in the message, never key material.

Key schedule (RFC 5869 HKDF with SHA-384):

    ss   = ss_MLKEM || ss_X25519                      (concatenation as in draft-ietf-tls-hybrid-design,
                                                       "Shared secret calculation"; ML-KEM first as in
                                                       X25519MLKEM768, draft-ietf-tls-ecdhe-mlkem)
    prk  = HKDF-Extract(salt=TH, ikm=ss)              (TH binds ek_I, ct, X_I, X_R into the keys, as the
                                                       X-Wing combiner hashes ct_X and pk_X with the two
                                                       secrets: draft-connolly-cfrg-xwing-kem, "Combiner")
    k_IR = HKDF-Expand(prk, "qkdd-peer/1 initiator->responder", 32)   records I -> R
    k_RI = HKDF-Expand(prk, "qkdd-peer/1 responder->initiator", 32)   records R -> I
    k_C  = HKDF-Expand(prk, "qkdd-peer/1 responder finish", 48)       RESPONDER_FINISH

The keys stay secret as long as either ML-KEM-768 or X25519 holds; authentication rests on ML-DSA-65.
On any failure the machine moves to FAILED and raises a HandshakeError whose `alert` the caller sends to
the peer in an ALERT frame (unauthenticated, informative only) before closing.

Channel binding to TLS: Python's ssl module offers no TLS 1.3 exporter (RFC 9266 tls-exporter needs
SSL_export_keying_material; `get_channel_binding` only knows tls-unique, undefined for TLS 1.3), so this
handshake is not bound to the TLS session. It needs no binding: it authenticates end to end over
whatever carries it, and an active TLS man-in-the-middle can learn metadata but forge nothing.
"""
from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field
from typing import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import HandshakeError, PeerAuthenticationError, PeerRefusedError
from .framing import Frame, FrameType
from .identity import format_fingerprint, key_fingerprint

# 2: a frame's key ids carry its frame id (qkdd.link.linkmsg.derive_key_ids); 3: LDPC codewords take interleaved
# bits of the frame and the QC-LDPC codes were lifted anew (qkdd.postprocess.ldpc), SLOTS go as the varint slot
# stream and link records may reach 256 MiB (qkdd.link.linkmsg)
PROTOCOL_VERSION = 3
NONCE_BYTES = 32
FINGERPRINT_BYTES = 32
X25519_BYTES = 32
MLKEM768_EK_BYTES = 1184
MLKEM768_CT_BYTES = 1088
MLDSA65_SIGNATURE_BYTES = 3309
CONFIRM_BYTES = 48
MAX_LINK_ID_BYTES = 255
RECORD_KEY_BYTES = 32
CONTEXT_RESPONDER = b"qkdd-peer/1 responder"
CONTEXT_INITIATOR = b"qkdd-peer/1 initiator"
LABEL_I_TO_R = b"qkdd-peer/1 initiator->responder"
LABEL_R_TO_I = b"qkdd-peer/1 responder->initiator"
LABEL_CONFIRM = b"qkdd-peer/1 responder finish"


class Role(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class State(enum.Enum):
    IDLE = "idle"
    AWAIT_INITIATOR_HELLO = "await-initiator-hello"
    AWAIT_RESPONDER_HELLO = "await-responder-hello"
    AWAIT_INITIATOR_FINISH = "await-initiator-finish"
    AWAIT_RESPONDER_FINISH = "await-responder-finish"
    ESTABLISHED = "established"
    FAILED = "failed"


class Alert(enum.IntEnum):
    UNEXPECTED_MESSAGE = 1
    DECODE_ERROR = 2
    UNSUPPORTED_VERSION = 3
    WRONG_LINK = 4
    UNKNOWN_KEY = 5
    BAD_SIGNATURE = 6
    BAD_CONFIRMATION = 7
    TIMEOUT = 8
    INTERNAL_ERROR = 9


START = "start"
# Every legal transition: (role, state, event) -> next state. The event is START or a received frame
# type; an ALERT in any state other than ESTABLISHED/FAILED fails the handshake (PeerRefusedError),
# and anything not listed here fails it with UNEXPECTED_MESSAGE.
TRANSITIONS: dict[tuple[Role, State, object], State] = {
    (Role.INITIATOR, State.IDLE, START): State.AWAIT_RESPONDER_HELLO,
    (Role.INITIATOR, State.AWAIT_RESPONDER_HELLO, FrameType.RESPONDER_HELLO): State.AWAIT_RESPONDER_FINISH,
    (Role.INITIATOR, State.AWAIT_RESPONDER_FINISH, FrameType.RESPONDER_FINISH): State.ESTABLISHED,
    (Role.RESPONDER, State.IDLE, START): State.AWAIT_INITIATOR_HELLO,
    (Role.RESPONDER, State.AWAIT_INITIATOR_HELLO, FrameType.INITIATOR_HELLO): State.AWAIT_INITIATOR_FINISH,
    (Role.RESPONDER, State.AWAIT_INITIATOR_FINISH, FrameType.INITIATOR_FINISH): State.ESTABLISHED,
}


@dataclass(frozen=True)
class SessionKeys:
    """What an established handshake yields. `session_id` is public (a hash of the transcript)."""

    send_key: bytes = field(repr=False)
    receive_key: bytes = field(repr=False)
    session_id: str


# ----------------------------------------------------------------------------------------- encoding
_LENGTH = struct.Struct(">H")


def _pack(*fields: bytes) -> bytes:
    return b"".join(_LENGTH.pack(len(f)) + f for f in fields)


def _unpack(body: bytes, sizes: tuple[int | None, ...], what: str) -> list[bytes]:
    """Split `body` into len(sizes) length-prefixed fields; a size of None accepts 1..255 bytes."""
    fields, offset = [], 0
    for size in sizes:
        if offset + _LENGTH.size > len(body):
            raise HandshakeError(f"{what} truncated", Alert.DECODE_ERROR)
        (n,) = _LENGTH.unpack_from(body, offset)
        offset += _LENGTH.size
        if (size is None and not 1 <= n <= MAX_LINK_ID_BYTES) or (size is not None and n != size):
            raise HandshakeError(f"{what}: field of {n} bytes where {size or '1..255'} expected",
                                 Alert.DECODE_ERROR)
        if offset + n > len(body):
            raise HandshakeError(f"{what} truncated", Alert.DECODE_ERROR)
        fields.append(body[offset:offset + n])
        offset += n
    if offset != len(body):
        raise HandshakeError(f"{what}: {len(body) - offset} trailing bytes", Alert.DECODE_ERROR)
    return fields


def alert_frame(code: int) -> Frame:
    return Frame(FrameType.ALERT, bytes([code & 0xFF]))


def _sha384(*parts: bytes) -> bytes:
    digest = hashlib.sha384()
    for part in parts:
        digest.update(part)
    return digest.digest()


def _expand(prk: bytes, label: bytes, length: int) -> bytes:
    return HKDFExpand(hashes.SHA384(), length, label).derive(prk)


# ------------------------------------------------------------------------------------------ machine
class Handshake:
    """One end of the handshake. `start()` then `receive(frame)` for each incoming handshake frame;
    both return the frames to send. When `state` is ESTABLISHED, `keys` holds the session keys."""

    def __init__(
        self,
        role: Role,
        link_id: str,
        signing_key: mldsa.MLDSA65PrivateKey,
        pinned_peer_key: mldsa.MLDSA65PublicKey,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        encoded_link = link_id.encode()
        if not 1 <= len(encoded_link) <= MAX_LINK_ID_BYTES:
            raise ValueError(f"link id must be 1..{MAX_LINK_ID_BYTES} bytes of UTF-8")
        self.role = role
        self.link_id = link_id
        self.state = State.IDLE
        self._keys: SessionKeys | None = None
        self._confirm = b""
        self._link = encoded_link
        self._signing_key = signing_key
        self._pinned = pinned_peer_key
        self._own_fp = key_fingerprint(signing_key.public_key())
        self._pinned_fp = key_fingerprint(pinned_peer_key)
        self._random = random_bytes
        self._transcript: list[bytes] = []
        self._x25519: x25519.X25519PrivateKey | None = None
        self._mlkem: mlkem.MLKEM768PrivateKey | None = None
        self._shared: bytes | None = None

    def __repr__(self) -> str:
        return f"Handshake({self.role.value}, link={self.link_id!r}, state={self.state.value})"

    @property
    def established(self) -> bool:
        return self.state is State.ESTABLISHED

    @property
    def keys(self) -> SessionKeys | None:
        """The session keys, once (and only once) the handshake is ESTABLISHED."""
        return self._keys if self.state is State.ESTABLISHED else None

    # -- public transitions -------------------------------------------------------------------------
    def start(self) -> list[Frame]:
        self._advance(START)
        if self.role is Role.RESPONDER:
            return []
        return [self._make_initiator_hello()]

    def receive(self, frame: Frame) -> list[Frame]:
        if self.state in (State.ESTABLISHED, State.FAILED):
            raise HandshakeError(f"handshake frame {frame.type.name} in state {self.state.value}",
                                 Alert.UNEXPECTED_MESSAGE)
        if frame.type == FrameType.ALERT:
            self._fail()
            raise PeerRefusedError(f"peer aborted the handshake: {alert_name(frame.body)}",
                                   Alert.INTERNAL_ERROR)
        try:
            handler = self._HANDLERS.get(frame.type)
            self._advance(frame.type)
            return handler(self, frame)
        except HandshakeError:
            self._fail()
            raise

    # -- internals ---------------------------------------------------------------------------------
    def _advance(self, event: object) -> None:
        next_state = TRANSITIONS.get((self.role, self.state, event))
        if next_state is None:
            name = event.name if isinstance(event, FrameType) else event
            message = f"{self.role.value}: unexpected {name} in state {self.state.value}"
            self.state = State.FAILED
            raise HandshakeError(message, Alert.UNEXPECTED_MESSAGE)
        self.state = next_state

    def _make_initiator_hello(self) -> Frame:
        self._x25519 = x25519.X25519PrivateKey.generate()
        self._mlkem = mlkem.MLKEM768PrivateKey.generate()
        body = _pack(
            bytes([PROTOCOL_VERSION]), self._link, self._random(NONCE_BYTES), self._own_fp,
            self._x25519.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
            self._mlkem.public_key().public_bytes_raw(),
        )
        frame = Frame(FrameType.INITIATOR_HELLO, body)
        self._transcript.append(frame.to_bytes())
        return frame

    def _check_hello_common(self, version: bytes, link: bytes, fingerprint: bytes, what: str) -> None:
        if version[0] != PROTOCOL_VERSION:
            raise HandshakeError(f"{what}: peer speaks protocol version {version[0]}, this end {PROTOCOL_VERSION}",
                                 Alert.UNSUPPORTED_VERSION)
        if link != self._link:
            raise HandshakeError(
                f"{what}: peer is for link {link.decode(errors='replace')!r}, this end for {self.link_id!r}",
                Alert.WRONG_LINK)
        if fingerprint != self._pinned_fp:
            raise PeerAuthenticationError(
                f"{what}: peer signs with key {format_fingerprint(fingerprint)}, "
                f"but link {self.link_id!r} pins {format_fingerprint(self._pinned_fp)}: peer refused",
                Alert.UNKNOWN_KEY)

    def _on_initiator_hello(self, frame: Frame) -> list[Frame]:
        version, link, _nonce, fingerprint, x_i, ek_i = _unpack(
            frame.body, (1, None, NONCE_BYTES, FINGERPRINT_BYTES, X25519_BYTES, MLKEM768_EK_BYTES),
            "INITIATOR_HELLO")
        self._check_hello_common(version, link, fingerprint, "INITIATOR_HELLO")
        self._transcript.append(frame.to_bytes())
        try:
            peer_x = x25519.X25519PublicKey.from_public_bytes(x_i)
            peer_ek = mlkem.MLKEM768PublicKey.from_public_bytes(ek_i)
            ss_mlkem, ct = peer_ek.encapsulate()
            self._x25519 = x25519.X25519PrivateKey.generate()
            ss_x = self._x25519.exchange(peer_x)
        except ValueError:
            raise HandshakeError("INITIATOR_HELLO: invalid X25519 share or ML-KEM-768 key",
                                 Alert.DECODE_ERROR) from None
        self._shared = ss_mlkem + ss_x
        unsigned = _pack(
            bytes([PROTOCOL_VERSION]), self._link, self._random(NONCE_BYTES), self._own_fp,
            self._x25519.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw), ct,
        )
        digest = _sha384(self._transcript[0], unsigned)
        signature = self._signing_key.sign(digest, CONTEXT_RESPONDER)
        reply = Frame(FrameType.RESPONDER_HELLO, unsigned + _pack(signature))
        self._transcript.append(reply.to_bytes())
        return [reply]

    def _on_responder_hello(self, frame: Frame) -> list[Frame]:
        version, link, _nonce, fingerprint, x_r, ct, signature = _unpack(
            frame.body, (1, None, NONCE_BYTES, FINGERPRINT_BYTES, X25519_BYTES, MLKEM768_CT_BYTES,
                         MLDSA65_SIGNATURE_BYTES), "RESPONDER_HELLO")
        self._check_hello_common(version, link, fingerprint, "RESPONDER_HELLO")
        unsigned = frame.body[:-(_LENGTH.size + MLDSA65_SIGNATURE_BYTES)]
        try:
            self._pinned.verify(signature, _sha384(self._transcript[0], unsigned), CONTEXT_RESPONDER)
        except InvalidSignature:
            raise PeerAuthenticationError(
                f"RESPONDER_HELLO: signature does not verify under the pinned key "
                f"{format_fingerprint(self._pinned_fp)} of link {self.link_id!r}: peer refused",
                Alert.BAD_SIGNATURE) from None
        try:
            ss_mlkem = self._mlkem.decapsulate(ct)
            ss_x = self._x25519.exchange(x25519.X25519PublicKey.from_public_bytes(x_r))
        except ValueError:
            raise HandshakeError("RESPONDER_HELLO: invalid X25519 share or ML-KEM-768 ciphertext",
                                 Alert.DECODE_ERROR) from None
        self._shared = ss_mlkem + ss_x
        self._transcript.append(frame.to_bytes())
        my_signature = self._signing_key.sign(_sha384(*self._transcript), CONTEXT_INITIATOR)
        finish = Frame(FrameType.INITIATOR_FINISH, _pack(my_signature))
        self._transcript.append(finish.to_bytes())
        self._derive()
        return [finish]

    def _on_initiator_finish(self, frame: Frame) -> list[Frame]:
        (signature,) = _unpack(frame.body, (MLDSA65_SIGNATURE_BYTES,), "INITIATOR_FINISH")
        try:
            self._pinned.verify(signature, _sha384(*self._transcript), CONTEXT_INITIATOR)
        except InvalidSignature:
            raise PeerAuthenticationError(
                f"INITIATOR_FINISH: signature does not verify under the pinned key "
                f"{format_fingerprint(self._pinned_fp)} of link {self.link_id!r}: peer refused",
                Alert.BAD_SIGNATURE) from None
        self._transcript.append(frame.to_bytes())
        confirm = self._derive()
        return [Frame(FrameType.RESPONDER_FINISH, _pack(confirm))]

    def _on_responder_finish(self, frame: Frame) -> list[Frame]:
        (tag,) = _unpack(frame.body, (CONFIRM_BYTES,), "RESPONDER_FINISH")
        if not hmac.compare_digest(tag, self._confirm):
            raise HandshakeError("RESPONDER_FINISH: key confirmation failed", Alert.BAD_CONFIRMATION)
        self._confirm = b""
        return []

    def _derive(self) -> bytes:
        """Session keys from the hybrid secret and the transcript; returns the confirmation tag."""
        transcript_hash = _sha384(*self._transcript)
        prk = hmac.new(transcript_hash, self._shared, hashlib.sha384).digest()  # HKDF-Extract, RFC 5869 §2.2
        i_to_r = _expand(prk, LABEL_I_TO_R, RECORD_KEY_BYTES)
        r_to_i = _expand(prk, LABEL_R_TO_I, RECORD_KEY_BYTES)
        confirm = hmac.new(_expand(prk, LABEL_CONFIRM, CONFIRM_BYTES), transcript_hash, hashlib.sha384).digest()
        session_id = hashlib.sha256(b"qkdd-peer/1 session id" + transcript_hash).hexdigest()[:16]
        if self.role is Role.INITIATOR:
            self._keys = SessionKeys(i_to_r, r_to_i, session_id)
            self._confirm = confirm
        else:
            self._keys = SessionKeys(r_to_i, i_to_r, session_id)
        self._forget_secrets()
        return confirm

    def _fail(self) -> None:
        """FAILED, holding no secret: no hybrid secret, ephemeral key, session key or confirmation tag."""
        self.state = State.FAILED
        self._keys = None
        self._confirm = b""
        self._forget_secrets()

    def _forget_secrets(self) -> None:
        self._shared = None
        self._x25519 = None
        self._mlkem = None

    _HANDLERS = {
        FrameType.INITIATOR_HELLO: _on_initiator_hello,
        FrameType.RESPONDER_HELLO: _on_responder_hello,
        FrameType.INITIATOR_FINISH: _on_initiator_finish,
        FrameType.RESPONDER_FINISH: _on_responder_finish,
    }


def alert_name(body: bytes) -> str:
    if len(body) != 1:
        return "malformed alert"
    try:
        return Alert(body[0]).name.lower().replace("_", " ")
    except ValueError:
        return f"alert code {body[0]}"


__all__ = ["Alert", "Handshake", "Role", "SessionKeys", "State", "TRANSITIONS", "alert_frame"]

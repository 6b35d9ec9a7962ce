"""Hybrid pre-shared keys (qkdd.consumers.hybrid): the KDF against RFC 5869's published vector, ML-KEM-768
sizes per FIPS 203, the HYBRID_EPOCH wire layout, and two rotations that agree over the real reservation
service (in-memory session, real SQLite stores) and install the same derived key at both ends, never the
bare QKD key; an end configured differently is refused. The charon test (test_ipsec_ppk.py) shows an IKE
SA coming up with a hybrid PPK, i.e. both charons got the same one."""
from __future__ import annotations

import os
import struct
import time
import uuid

import pytest
import trio

from qkdd.consumers import hybrid
from qkdd.consumers.rotation import EpochChannel, KeyRotation
from qkdd.consumers.wg_epoch import consumer_tag
from qkdd.keystore import KeyStore
from qkdd.metrics import Metrics
from qkdd.reservation.protocol import (NO_REQUEST, HybridEpochReservation, KemAnnouncement, MessageType, Purpose,
                                       ReservationEndpoint, ReservationProtocolError, encode_reserve)
from tests.consumer_support import RecordingSink, RotationPolicy as _Policy
from tests.reservation_support import memory_session, reservation_service

LINK_ID = "hybrid-link"
NAME = "site-a-b"


def test_hkdf_matches_rfc5869_test_case_1():
    okm = hybrid.hkdf_sha256(bytes([0x0B] * 22), salt=bytes(range(13)), info=bytes(range(0xF0, 0xFA)), length=42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")


def test_ml_kem_768_sizes_and_one_use_decapsulation_keys():
    receiver = hybrid.KemReceiver()
    public = receiver.fresh()
    assert len(public) == hybrid.ENCAPSULATION_KEY_BYTES == 1184          # FIPS 203 Table 3
    secret, field = hybrid.encapsulate(public)
    assert len(secret) == 32 and len(field) == hybrid.KEM_KEY_ID_BYTES + 1088
    assert receiver.decapsulate(field) == secret
    with pytest.raises(hybrid.HybridError, match="no longer holds"):
        receiver.decapsulate(field)                                       # each key once: forward secrecy
    with pytest.raises(hybrid.HybridError):
        hybrid.encapsulate(public[:-1])


def test_the_psk_depends_on_both_secrets_and_the_epoch():
    qkd, kem = os.urandom(32), os.urandom(32)
    key_id = str(uuid.uuid4())
    tag = consumer_tag("ipsec", NAME)
    base = hybrid.derive_psk(qkd, kem, tag=tag, number=1, key_id=key_id)
    assert len(base) == 32 and base not in (qkd, kem)
    assert base == hybrid.derive_psk(qkd, kem, tag=tag, number=1, key_id=key_id)
    variants = [hybrid.derive_psk(os.urandom(32), kem, tag=tag, number=1, key_id=key_id),
                hybrid.derive_psk(qkd, os.urandom(32), tag=tag, number=1, key_id=key_id),
                hybrid.derive_psk(qkd, kem, tag=tag, number=2, key_id=key_id),
                hybrid.derive_psk(qkd, kem, tag=consumer_tag("kms", NAME), number=1, key_id=key_id)]
    assert base not in variants and len(set(variants)) == 4
    # the construction, spelled out: HKDF-SHA256(salt, QKD key || KEM secret, tag || epoch || key id)
    info = tag + struct.pack(">Q", 1) + uuid.UUID(key_id).bytes
    assert base == hybrid.hkdf_sha256(qkd + kem, salt=b"qkdd/hybrid-psk/v1", info=info, length=32)


def test_the_hybrid_wire_messages():
    endpoint = ReservationEndpoint()
    tag = bytes(range(1, 9))
    announce = endpoint.announce(KemAnnouncement(tag, b"\xab" * 1184))
    assert announce[:3] == bytes([3, MessageType.ANNOUNCE, Purpose.HYBRID_EPOCH])
    assert announce[3:19] == uuid.UUID(NO_REQUEST).bytes and announce[23:31] == tag
    assert announce[31:33] == (1184).to_bytes(2, "big") and len(announce) == 23 + 8 + 2 + 1184
    reservation = HybridEpochReservation(str(uuid.uuid4()), tag, 7, str(uuid.uuid4()), 12.5, b"\x01" * 1096)
    message = encode_reserve(reservation)
    assert message[2] == Purpose.HYBRID_EPOCH and message[-1098:-1096] == (1096).to_bytes(2, "big")
    [event] = ReservationEndpoint().receive(message)
    assert event.reservation == reservation
    [event] = ReservationEndpoint().receive(announce)
    assert event.announcement == KemAnnouncement(tag, b"\xab" * 1184)
    with pytest.raises(ValueError, match="KEM ciphertext"):
        encode_reserve(HybridEpochReservation(str(uuid.uuid4()), tag, 7, str(uuid.uuid4()), 12.5, b""))
    with pytest.raises(ReservationProtocolError, match="KEM encapsulation key of 0 bytes"):
        ReservationEndpoint().receive(announce[:19] + (10).to_bytes(4, "big") + tag + b"\x00\x00")


def _run_pair(tmp_path, modes: dict[str, str], *, epochs: int, timeout_s: float = 20.0):
    keys = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(4)]
    sinks, rotations = {}, {}
    for role in ("alice", "bob"):
        (tmp_path / role).mkdir(parents=True)
        store = KeyStore(str(tmp_path / role / "keys.sqlite3"), os.urandom(32))
        store.put_pending(LINK_ID, 1, keys, expires_at=time.time() + 3600, allocatable=[role == "alice"] * 4)
        store.commit_frame(LINK_ID, 1)
        sinks[role] = RecordingSink(role)
        rotations[role] = KeyRotation(_Policy(modes[role]), kind="ipsec", tag=consumer_tag("ipsec", NAME),
                                      leader=role == "alice", sink=sinks[role], store=store,
                                      metrics=Metrics().consumer("ipsec", NAME), state_dir=str(tmp_path / role),
                                      rotation_interval_s=0.5)

    async def main():
        async with trio.open_nursery() as nursery:
            for rotation in rotations.values():
                nursery.start_soon(rotation.run)
            a_stream, b_stream = memory_session()
            for role, stream in (("alice", a_stream), ("bob", b_stream)):
                service, serve = reservation_service(LINK_ID)
                EpochChannel([rotations[role]]).attach_to(service)
                nursery.start_soon(serve, stream)
            with trio.move_on_after(timeout_s):
                while min(len(sink.installed) for sink in sinks.values()) < epochs:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return keys, sinks, rotations


def test_both_ends_derive_the_same_hybrid_psk_for_every_epoch(tmp_path):
    keys, sinks, _ = _run_pair(tmp_path, {"alice": "mlkem768", "bob": "mlkem768"}, epochs=3)
    alice, bob = sinks["alice"].installed[:3], sinks["bob"].installed[:3]
    assert [(n, k) for n, k, _ in alice] == [(n, k) for n, k, _ in bob] == [(i + 1, keys[i][0]) for i in range(3)]
    assert [m for *_, m in alice] == [m for *_, m in bob]                  # the same PSK at both ends
    qkd = {key_id: material for key_id, material in keys}
    for number, key_id, material in alice:
        assert len(material) == 32 and material != qkd[key_id]          # never the bare QKD key
    assert len({m for *_, m in alice}) == 3


def test_ends_configured_differently_never_install_anything(tmp_path):
    # a plain leader's proposals are refused by a hybrid follower ...
    _, sinks, rotations = _run_pair(tmp_path / "1", {"alice": "none", "bob": "mlkem768"}, epochs=1, timeout_s=2.0)
    assert sinks["alice"].installed == [] and sinks["bob"].installed == []
    refused = rotations["bob"].metrics.metrics.registry.get_sample_value(
        "qkd_consumer_key_rotations_total", {"kind": "ipsec", "consumer": NAME, "result": "refused"})
    assert refused >= 1
    # ... and a hybrid leader never proposes without the follower's ML-KEM key
    _, sinks, rotations = _run_pair(tmp_path / "2", {"alice": "mlkem768", "bob": "none"}, epochs=1, timeout_s=2.0)
    assert sinks["alice"].installed == [] and sinks["bob"].installed == []
    assert rotations["alice"]._waiting_for_kem and rotations["bob"].state.epoch.number == 0

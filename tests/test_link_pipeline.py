"""Both ends of the link pipeline against each other in memory, on real simulator frames."""
import struct

import numpy as np
import pytest

from qkdd.hal.base import BobDetections
from qkdd.hal.sim import Attack
from qkdd.link import envelope, linkmsg
from qkdd.link.pipeline import (ALICE, BOB, Commit, Finished, PipelineSettings, Send, StorePending,
                                threshold_gate)
from tests.link_support import Ends, frame_pair, simulator


def test_both_ends_store_identical_keys_under_identical_ids():
    sim = simulator(25.0, seed=7)
    alice, bob, decoy = frame_pair(sim, 1000)
    ends = Ends(alice, bob, decoy).run()
    (a_store,), (b_store,) = ends.of(ALICE, StorePending), ends.of(BOB, StorePending)
    assert a_store.keys == b_store.keys
    assert len(a_store.keys) > 10 and all(len(m) == 32 for _, m in a_store.keys)
    assert len({k for k, _ in a_store.keys}) == len(a_store.keys)
    # disjoint allocation partitions: each key may be handed out on its own by exactly one end
    assert all(x != y for x, y in zip(a_store.allocatable, b_store.allocatable))
    assert ends.of(ALICE, Commit) and ends.of(BOB, Commit)
    a, b = ends.outcome(ALICE), ends.outcome(BOB)
    assert a.aborted is None and b.aborted is None
    assert a.secret_bits == b.secret_bits == 256 * len(a_store.keys)
    assert a.qber == b.qber and 0.01 < a.qber < 0.06
    assert a.qber_estimate == b.qber_estimate
    assert a.disclosed_bits == b.disclosed_bits > 0
    # the finite-key bound is what limits the output, and it is well below the sifted length
    assert a.secret_bits <= a.key_length_bits < a.sifted_key_bits


def test_bob_stores_before_he_acknowledges_and_alice_commits_only_after():
    sim = simulator(25.0, seed=8)
    ends = Ends(*frame_pair(sim, 5)).run()
    bob_kinds = [type(a).__name__ for a in ends.actions[BOB]]
    # Bob: StorePending comes right before the Send carrying the amplification ACK
    i = bob_kinds.index("StorePending")
    assert bob_kinds[i + 1] == "Send"
    _, parts = envelope.decode(ends.actions[BOB][i + 1].record)
    assert [s for s, _ in parts] == [envelope.Step.AMPLIFY]
    alice_kinds = [type(a).__name__ for a in ends.actions[ALICE]]
    assert alice_kinds[-4:] == ["StorePending", "Commit", "Send", "Finished"]


def test_records_are_deterministic_bytes_on_the_wire():
    """What one end sends is exactly what the other parses: replaying Bob's recorded bytes into a fresh
    Alice reproduces Alice's first answer byte for byte."""
    sim = simulator(25.0, seed=9)
    alice_frame, bob_frame, decoy = frame_pair(sim, 77)
    ends = Ends(alice_frame, bob_frame, decoy).run()
    from qkdd.link.pipeline import FramePipeline
    fresh = FramePipeline(ALICE, alice_frame, decoy=decoy)
    first_bob = ends.records[0][1]
    (answer,) = fresh.receive(first_bob)
    assert answer.record == ends.records[1][1]



def test_detections_kept_as_the_devices_slot_stream_send_the_same_slots_without_decoding_them():
    """Bob's detections built from the simulator wire's checked slot stream (BobDetections.from_slot_stream) send
    that stream as SLOTS: the same record byte for byte as from the decoded slots, the same keys at both ends, and
    the slots themselves never decoded at Bob."""
    from dataclasses import replace
    from qkdd.bindings import sift
    from qkdd.link.pipeline import FramePipeline
    sim = simulator(25.0, seed=9)
    alice_frame, bob_frame, decoy = frame_pair(sim, 77)
    bob = bob_frame.bob
    stream = sift.encode_slots(np.ascontiguousarray(bob.slots, dtype=np.uint64), bob_frame.slot_count)
    streamed = BobDetections.from_slot_stream(stream, bob.count, bob_frame.slot_count, bob.bases, bob.outcomes)
    (from_slots,) = FramePipeline(BOB, bob_frame).start()
    (from_stream,) = FramePipeline(BOB, replace(bob_frame, bob=streamed)).start()
    assert from_stream.record == from_slots.record
    assert streamed._slots is None                                  # never decoded
    ends = Ends(alice_frame, replace(bob_frame, bob=streamed), decoy).run()
    assert ends.outcome(ALICE).aborted is None and ends.outcome(ALICE).secret_bits > 0
    (a_store,), (b_store,) = ends.of(ALICE, StorePending), ends.of(BOB, StorePending)
    assert a_store.keys == b_store.keys and len(a_store.keys) > 10
    assert np.array_equal(streamed.slots, bob.slots)              # decoded on first use

def test_intercept_resend_frame_is_refused_by_the_gate_and_stores_nothing():
    sim = simulator(25.0, seed=3, attack=Attack("intercept-resend", 1.0))
    ends = Ends(*frame_pair(sim, 9), alice_gate=threshold_gate(0.08), bob_gate=threshold_gate(0.08)).run()
    assert not ends.of(ALICE, StorePending) and not ends.of(BOB, StorePending)
    a, b = ends.outcome(ALICE), ends.outcome(BOB)
    assert a.qber_estimate == b.qber_estimate and 0.2 < a.qber_estimate < 0.3
    assert b.gate_refused and a.gate_refused
    assert a.aborted_by_peer and a.abort_code == linkmsg.AbortReason.QBER


def test_alice_alone_can_veto_a_frame():
    sim = simulator(25.0, seed=4)
    ends = Ends(*frame_pair(sim, 11), alice_gate=lambda q: "operator says no").run()
    assert not ends.of(BOB, StorePending)
    assert ends.outcome(BOB).aborted_by_peer and ends.outcome(BOB).abort_code == linkmsg.AbortReason.QBER


def test_a_verification_tag_that_differs_discards_the_frame_at_both_ends():
    """Bob's hash announcement altered in flight: Alice's check fails, neither end stores a key."""
    sim = simulator(25.0, seed=5)
    seen = []

    def tamper(role, record):
        frame_id, parts = envelope.decode(record)
        steps = [s for s, _ in parts]
        if role == BOB and envelope.Step.VERIFY in steps:
            seen.append(frame_id)
            body = bytearray(parts[-1][1])
            body[-1] ^= 0x01                      # last byte of the tag
            return envelope.encode(frame_id, parts[:-1] + [(envelope.Step.VERIFY, bytes(body))])
        return record

    ends = Ends(*frame_pair(sim, 12)).run(tamper)
    assert seen == [12]
    assert not ends.of(ALICE, StorePending) and not ends.of(BOB, StorePending)
    assert ends.outcome(ALICE).abort_code == linkmsg.AbortReason.VERIFICATION
    assert ends.outcome(BOB).aborted_by_peer


@pytest.mark.parametrize("mangle", [
    lambda r: r[:-1],                       # truncated
    lambda r: b"XXXX" + r[4:],              # bad magic
    lambda r: r + b"\x00",                  # trailing byte
    lambda r: r[:8] + (99).to_bytes(8, "little") + r[16:],   # another frame
])
def test_malformed_records_abort_the_frame_with_a_reason(mangle):
    sim = simulator(25.0, seed=6)
    alice_frame, bob_frame, decoy = frame_pair(sim, 13)
    from qkdd.link.pipeline import FramePipeline
    bob = FramePipeline(BOB, bob_frame)
    alice = FramePipeline(ALICE, alice_frame, decoy=decoy)
    (first,) = bob.start()
    actions = alice.receive(mangle(first.record))
    assert isinstance(actions[0], Send) and isinstance(actions[-1], Finished)
    _, parts = envelope.decode(actions[0].record)
    assert parts[-1][0] == envelope.Step.ABORT
    code, text = linkmsg.decode_abort(parts[-1][1])
    assert code == linkmsg.AbortReason.PROTOCOL and "refused" in text
    assert actions[-1].outcome.aborted
    # Bob takes the ABORT and ends the frame too
    (finished,) = bob.receive(actions[0].record)
    assert finished.outcome.aborted_by_peer


def test_slots_alice_has_no_record_of_are_refused():
    sim = simulator(25.0, seed=10)
    alice_frame, bob_frame, decoy = frame_pair(sim, 14)
    from dataclasses import replace
    from qkdd.link.pipeline import FramePipeline
    bob = bob_frame.bob
    shifted = replace(bob_frame, bob=BobDetections(bob.slots + np.uint64(1), bob.bases, bob.outcomes))
    bob = FramePipeline(BOB, shifted)
    alice = FramePipeline(ALICE, alice_frame, decoy=decoy)
    (first,) = bob.start()
    actions = alice.receive(first.record)
    assert "no prepared state" in actions[-1].outcome.aborted


def test_key_ids_derive_identically_and_never_collide():
    ids = linkmsg.derive_key_ids(bytes(32), 1000)
    assert ids == linkmsg.derive_key_ids(bytes(32), 1000)
    assert len(set(ids)) == 1000 and all(i[14] == "4" for i in ids)
    assert set(ids).isdisjoint(linkmsg.derive_key_ids(b"\x01" * 32, 1000))


def test_key_ids_of_a_frame_share_its_prefix_and_sort_by_frame():
    # the link passes the frame id: a frame's ids sit together in the key store's id index
    frame_id = 1_796_561_635_469_285
    ids = linkmsg.derive_key_ids(bytes(32), 1000, frame_id)
    assert ids == linkmsg.derive_key_ids(bytes(32), 1000, frame_id)
    assert len(set(ids)) == 1000
    prefix = f"{frame_id % (1 << 48):012x}"
    assert all(i.replace("-", "")[:12] == prefix and i[14] == "8" and i[19] in "89ab" for i in ids)
    later = linkmsg.derive_key_ids(b"\x01" * 32, 1000, frame_id + 1)
    assert max(ids) < min(later)                       # frames in id order
    assert set(ids).isdisjoint(linkmsg.derive_key_ids(b"\x01" * 32, 1000, frame_id))



def test_frame_key_ids_are_the_uuids_of_the_frame_prefix_and_the_seed_stream():
    # the ids are written as text all at once: check them against uuid.UUID on the same 128-bit values
    import hashlib
    import uuid
    for frame_id, count in ((0, 1), (2**48 + 7, 300), (2**63 - 1, 17), (5, 0)):
        seed = bytes(range(32))
        stream = hashlib.shake_256(linkmsg.KEY_ID_LABEL + seed).digest(16 * count)
        expected = []
        for i in range(count):
            value = ((frame_id % 2**48) << 80) | int.from_bytes(stream[16 * i + 6:16 * i + 16], "big")
            value = (value & ~(0xF << 76) & ~(0x3 << 62)) | (0x8 << 76) | (0x2 << 62)   # version 8, variant 10
            expected.append(str(uuid.UUID(int=value)))
        assert linkmsg.derive_key_ids(seed, count, frame_id) == expected

def _reveal_rewriter(fields: dict[int, float]):
    """A tamper function that sets f64 fields (by index: 0-5 decoy settings, 7 eps_sec, 8 eps_cor) of
    Alice's REVEAL."""
    def tamper(role, record):
        frame_id, parts = envelope.decode(record)
        if role != ALICE or parts[0][0] != envelope.Step.ESTIMATE:
            return record
        body = bytearray(parts[0][1])
        for index, value in fields.items():
            body[8 * index:8 * index + 8] = struct.pack("<d", value)
        return envelope.encode(frame_id, [(parts[0][0], bytes(body))] + [(s, bytes(b)) for s, b in parts[1:]])
    return tamper


@pytest.mark.parametrize("fields", [
    {0: 1000.0, 3: 1e-20, 4: 1e-100},                # valid decoy settings the analysis overflows on
    {2: 5e-324, 4: 5e-324, 5: 5e-324},               # ... or gets NaN from
])
def test_announced_decoy_settings_the_analysis_cannot_handle_abort_the_frame(fields):
    ends = Ends(*frame_pair(simulator(25.0, seed=11), 15)).run(_reveal_rewriter(fields))
    assert not ends.of(ALICE, StorePending) and not ends.of(BOB, StorePending)
    bob = ends.outcome(BOB)
    assert bob.abort_code == linkmsg.AbortReason.PROTOCOL and "decoy analysis" in bob.aborted
    assert ends.outcome(ALICE).aborted_by_peer


@pytest.mark.parametrize("fields", [{8: 1e-100}, {8: 5e-324}, {7: 1e-300}, {7: 5e-324}])
def test_security_parameters_too_small_to_honour_abort_the_frame(fields):
    """eps_cor so small that no number of verification tags reaches it, or an eps_sec the analysis cannot
    evaluate: Bob refuses the REVEAL."""
    ends = Ends(*frame_pair(simulator(25.0, seed=11), 16)).run(_reveal_rewriter(fields))
    assert not ends.of(ALICE, StorePending) and not ends.of(BOB, StorePending)
    bob = ends.outcome(BOB)
    assert bob.abort_code == linkmsg.AbortReason.PROTOCOL and "security parameters" in bob.aborted


@pytest.mark.parametrize("alice_skew_s, bob_skew_s", [(3600.0, 0.0), (0.0, 3600.0), (-3600.0, 0.0)])
def test_two_ends_with_skewed_clocks_store_the_same_expiry(alice_skew_s, bob_skew_s):
    """Alice's KEYS carries the keys' expiry from her clock: both ends store that one time, an hour of clock
    difference between them notwithstanding (each end's own clock would give times an hour apart)."""
    import time

    sim = simulator(25.0, seed=31)
    ends = Ends(*frame_pair(sim, 3), alice_clock=lambda: time.time() + alice_skew_s,
                bob_clock=lambda: time.time() + bob_skew_s).run()
    (a_store,), (b_store,) = ends.of(ALICE, StorePending), ends.of(BOB, StorePending)
    assert a_store.expires_at == b_store.expires_at
    assert abs(a_store.expires_at - (time.time() + alice_skew_s + PipelineSettings().key_expiry_s)) < 60
    assert a_store.qber == b_store.qber == ends.outcome(ALICE).qber > 0


@pytest.mark.parametrize("alice_skew_s, alice_expiry_s, bob_expiry_s, why", [
    (3 * 3600.0, 86400.0, 86400.0, "clocks three hours apart"),
    (0.0, 2 * 86400.0, 86400.0, "Alice keeps keys a day longer than Bob accepts"),
    (-2 * 86400.0, 86400.0, 86400.0, "keys already expired on Bob's clock"),
])
def test_an_expiry_bob_cannot_accept_aborts_the_frame_before_anything_is_stored(alice_skew_s, alice_expiry_s,
                                                                                 bob_expiry_s, why):
    import time

    sim = simulator(25.0, seed=32)
    ends = Ends(*frame_pair(sim, 4), settings=PipelineSettings(key_expiry_s=alice_expiry_s),
                bob_settings=PipelineSettings(key_expiry_s=bob_expiry_s),
                alice_clock=lambda: time.time() + alice_skew_s).run()
    bob = ends.outcome(BOB)
    assert bob.abort_code == linkmsg.AbortReason.PROTOCOL and "KEYS: the keys would expire" in bob.aborted, why
    assert ends.outcome(ALICE).aborted_by_peer
    assert not ends.of(ALICE, StorePending) and not ends.of(BOB, StorePending)


def test_key_expiry_outside_a_year_is_refused_in_the_settings():
    with pytest.raises(ValueError, match="key_expiry_s"):
        PipelineSettings(key_expiry_s=0.5)
    with pytest.raises(ValueError, match="key_expiry_s"):
        PipelineSettings(key_expiry_s=float("nan"))

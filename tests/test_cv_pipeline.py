"""The GG02 frame pipeline's two ends against each other in memory, record by record (the bytes the link
carries), and the simulated CV quantum channel's wire: equal keys, aborts on bad records, strict parsing."""
import dataclasses

import numpy as np
import pytest

from qkdd.hal.base import CvAliceSymbols, CvBobSamples, RawFrame
from qkdd.hal.sim import cv_wire
from qkdd.hal.sim.cv_channel import CvChannel, CvChannelSettings
from qkdd.hal.sim.cv_run import operating_modulation_variance
from qkdd.link import envelope
from qkdd.link.cv_pipeline import CvFramePipeline
from qkdd.link.linkmsg import AbortReason
from qkdd.link.pipeline import Commit, Finished, PipelineSettings, Send, StorePending
from qkdd.protocols.cvqkd import CvParams


def _ends(distance_km, symbols, detection="homodyne", seed=1, frame_id=42):
    params = CvParams(distance_km=distance_km, detection=detection)
    params = dataclasses.replace(params, modulation_variance=operating_modulation_variance(params))
    channel = CvChannel(CvChannelSettings(params), seed=seed)
    calibration = channel.calibrate(500_000)
    frame = channel.frame(symbols)
    alice = CvFramePipeline("alice", RawFrame(frame_id, symbols, cv_alice=CvAliceSymbols(
        frame.alice, params.modulation_variance)), PipelineSettings())
    bob = CvFramePipeline("bob", RawFrame(frame_id, symbols, cv_bob=CvBobSamples(
        frame.quadrature, frame.bob_v, calibration.lo_variance_v2, calibration.electronic_variance_v2, detection,
        params.eta_det)), PipelineSettings())
    return alice, bob


def _run(alice, bob, tamper=None):
    """Deliver every record to the other end (through `tamper(sender, record)` if given) until both are done."""
    stores, outcomes, queue = {"alice": [], "bob": []}, {}, [(bob, bob.start())]
    while queue:
        sender, actions = queue.pop(0)
        receiver = alice if sender is bob else bob
        for action in actions:
            if isinstance(action, Send):
                record = tamper(sender.role, action.record) if tamper else action.record
                queue.append((receiver, receiver.receive(record)))
            elif isinstance(action, StorePending):
                stores[sender.role].extend(action.keys)
            elif isinstance(action, Commit):
                assert stores[sender.role]
            elif isinstance(action, Finished):
                outcomes[sender.role] = action.outcome
    return stores, outcomes


def test_both_ends_store_the_same_keys_from_a_homodyne_frame():
    alice, bob = _ends(2.0, 1_000_000)
    stores, outcomes = _run(alice, bob)
    assert alice.done and bob.done and stores["alice"] and stores["alice"] == stores["bob"]
    assert outcomes["alice"].secret_bits == outcomes["bob"].secret_bits == 256 * len(stores["alice"])
    assert outcomes["alice"].disclosed_bits > 0 and outcomes["alice"].aborted is None


def test_heterodyne_frame_at_short_distance():
    alice, bob = _ends(2.0, 1_000_000, "heterodyne", seed=2)
    stores, _ = _run(alice, bob)
    assert stores["alice"] and stores["alice"] == stores["bob"]


def test_a_frame_too_small_for_the_finite_size_terms_aborts_at_estimation():
    alice, bob = _ends(10.0, 200_000)
    stores, outcomes = _run(alice, bob)
    assert not stores["alice"] and not stores["bob"]
    assert outcomes["bob"].abort_code == AbortReason.ESTIMATION and outcomes["alice"].aborted_by_peer


def test_a_tampered_record_aborts_the_frame_with_protocol():
    def truncate_reveal(role, record):
        frame_id, parts = envelope.decode(record)
        if role == "alice" and parts[0][0] == envelope.Step.CV:
            return envelope.encode(frame_id, [(envelope.Step.CV, bytes(parts[0][1])[:-4])])
        return record
    alice, bob = _ends(10.0, 200_000)
    stores, outcomes = _run(alice, bob, truncate_reveal)
    assert not stores["bob"] and outcomes["bob"].abort_code == AbortReason.PROTOCOL


def test_cv_wire_round_trip_and_strict_checks():
    bob = cv_wire.Receiver("bob")
    bob.receive_data(cv_wire.encode_alice_hello(cv_wire.AliceHello("homodyne", 1e8)))
    assert bob.next_message() == cv_wire.AliceHello("homodyne", 1e8)
    volts = np.arange(6, dtype=np.float32).reshape(6, 1)
    message = cv_wire.CvFrameMessage(7, 2.0, 0.1, np.array([0, 1, 0, 1, 1, 0], dtype=np.uint8), volts)
    bob.receive_data(cv_wire.encode_frame(message))
    got = bob.next_message()
    assert got.frame_id == 7 and np.array_equal(got.volts, volts) and np.array_equal(got.quadrature, message.quadrature)
    bob.receive_data(cv_wire.encode_frame(message))              # the same id again: ids must increase
    with pytest.raises(cv_wire.WireError, match="not above"):
        bob.next_message()
    for bad, fragment in [(dataclasses.replace(message, frame_id=9, lo_variance_v2=0.05), "calibration"),
                          (dataclasses.replace(message, frame_id=9, quadrature=np.full(6, 2, np.uint8)), "quadrature"),
                          (dataclasses.replace(message, frame_id=9, volts=np.full((6, 1), np.nan, np.float32)),
                           "non-finite")]:
        fresh = cv_wire.Receiver("bob")
        fresh.receive_data(cv_wire.encode_alice_hello(cv_wire.AliceHello("homodyne", 1e8)) + cv_wire.encode_frame(bad))
        fresh.next_message()
        with pytest.raises(cv_wire.WireError, match=fragment):
            fresh.next_message()
    alice = cv_wire.Receiver("alice")
    alice.receive_data(cv_wire.encode_ack(3))                    # an ACK before the hello
    with pytest.raises(cv_wire.WireError, match="cannot take ACK"):
        alice.next_message()


def test_a_cvqkd_link_with_transcript_tags_is_refused_at_startup(tmp_path):
    from qkdd.auth import secret as auth_secret
    from qkdd.config import load_config
    from qkdd.link.service import build_links, open_keystore
    from qkdd.peer import generate_identity, save_private_key, save_public_key
    from qkdd.preflight import StartupError
    save_private_key(generate_identity(), tmp_path / "a.key")
    save_public_key(generate_identity().public_key(), tmp_path / "b.pub")
    auth_secret.write(auth_secret.generate("l1", 1024), str(tmp_path / "l1.secret"))
    (tmp_path / "state").mkdir()
    path = tmp_path / "qkdd.toml"
    path.write_text(f'[daemon]\nstate_dir = "{tmp_path}/state"\n[[links]]\nlink_id = "l1"\nrole = "alice"\n'
                    f'driver = "sim"\nprotocol = "cvqkd"\npeer_listen = "127.0.0.1:0"\n'
                    f'peer_key_file = "{tmp_path}/a.key"\npeer_public_key = "{tmp_path}/b.pub"\n'
                    f'auth = "its"\nauth_secret_file = "{tmp_path}/l1.secret"\n')
    config = load_config(str(path), {})
    store = open_keystore(str(tmp_path / "state"))
    try:
        with pytest.raises(StartupError) as caught:
            build_links(config, store)
        assert caught.value.what == "links[0].auth" and '"pq"' in str(caught.value)
    finally:
        store.close()

"""reconciliation = "ldpc" on BB84 links: the frame pipeline's two ends in memory, and two link engines over
real parts (TLS peer channel, the sim devices over TCP, SQLite key stores) storing identical keys."""
import pytest
import trio

from qkdd.config import ConfigError, LinkConfig
from qkdd.hal.sim import SimParams
from qkdd.hal.sim.driver import SimAliceDevice, SimBobDevice
from qkdd.hal.sim.settings import MAX_FRAME_SLOTS, SimConfig
from qkdd.hal.sim.simulator import Simulator
from qkdd.keystore import KeyState, KeyStore
from qkdd.link import envelope
from qkdd.link.envelope import Step
from qkdd.link.pipeline import ALICE, BOB, PipelineSettings, StorePending
from qkdd.peer import generate_identity
from qkdd.postprocess import ldpc_plan
from tests.link_support import (
    TEST_DETECTIONS,
    TEST_SOURCE,
    Ends,
    LinkEnd,
    frame_pair,
    simulator,
)
from tests.peer_harness import fast_settings

LDPC = PipelineSettings(reconciliation="ldpc")
LINK = "link-ldpc"


def test_pipeline_ends_reconcile_with_ldpc_and_store_identical_keys():
    alice, bob, decoy = frame_pair(simulator(25.0, seed=7), 1000)
    ends = Ends(alice, bob, decoy, settings=LDPC).run()
    (a_store,), (b_store,) = ends.of(ALICE, StorePending), ends.of(BOB, StorePending)
    assert a_store.keys == b_store.keys and len(a_store.keys) > 5
    a, b = ends.outcome(ALICE), ends.outcome(BOB)
    assert a.aborted is None and b.aborted is None
    assert a.qber == b.qber and 0.01 < a.qber < 0.06
    assert a.disclosed_bits == b.disclosed_bits > 0
    assert a.codewords_given_up == b.codewords_given_up == 0
    steps = {step for _, record in ends.records for step, _ in envelope.decode(record)[1]}
    assert Step.LDPC in steps and Step.CASCADE not in steps
    # at most a few LDPC exchanges, where Cascade takes hundreds
    ldpc_records = [r for _, r in ends.records if any(s == Step.LDPC for s, _ in envelope.decode(r)[1])]
    assert len(ldpc_records) <= 2 * 8 + 2


def test_ends_configured_differently_abort_the_frame():
    alice, bob, decoy = frame_pair(simulator(25.0, seed=8), 5)
    ends = Ends(alice, bob, decoy, settings=PipelineSettings(), bob_settings=LDPC).run()
    a, b = ends.outcome(ALICE), ends.outcome(BOB)
    assert a.aborted and "reconciliation" in a.aborted and b.aborted
    assert not ends.of(ALICE, StorePending) and not ends.of(BOB, StorePending)


def test_config_accepts_ldpc_for_bb84_only():
    LinkConfig(link_id="a", role="alice", driver="sim", reconciliation="ldpc").validate("links[0]")
    with pytest.raises(ConfigError):
        LinkConfig(link_id="a", role="alice", driver="sim", protocol="e91",
                   reconciliation="ldpc").validate("links[0]")
    with pytest.raises(ValueError):
        PipelineSettings(reconciliation="turbo")


def test_config_takes_bobs_ldpc_decoder_with_ldpc_only():
    LinkConfig(link_id="a", role="bob", driver="sim", reconciliation="ldpc",
               ldpc_decoder="sum-product").validate("links[0]")
    with pytest.raises(ConfigError, match="ldpc_decoder"):
        LinkConfig(link_id="a", role="bob", driver="sim", ldpc_decoder="sum-product").validate("links[0]")
    with pytest.raises(ValueError, match="ldpc_decoder"):
        PipelineSettings(reconciliation="ldpc", ldpc_decoder="gallager-b")


def record_bob_option(monkeypatch, name: str) -> list:
    """The pipeline's LdpcBob replaced by a subclass of the real class that records the keyword `name` it is built
    with, in the list returned."""
    from qkdd.link import pipeline
    seen = []

    class RecordingBob(pipeline.LdpcBob):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs.get(name))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(pipeline, "LdpcBob", RecordingBob)
    return seen


def test_bobs_sum_product_setting_reaches_his_decoder_and_alice_needs_none(monkeypatch):
    """Bob set to the sum-product decoder, Alice left at the default: the frame reconciles (START names the code)
    and Bob's LdpcBob was built with the setting (seen through a recording subclass of the real class)."""
    seen = record_bob_option(monkeypatch, "decoder")
    alice, bob, decoy = frame_pair(simulator(25.0, seed=9), 1000)
    ends = Ends(alice, bob, decoy, settings=LDPC,
                bob_settings=PipelineSettings(reconciliation="ldpc", ldpc_decoder="sum-product")).run()
    (a_store,), (b_store,) = ends.of(ALICE, StorePending), ends.of(BOB, StorePending)
    assert a_store.keys == b_store.keys and a_store.keys
    assert seen == ["sum-product"]


def test_bobs_engine_marks_a_frame_with_none_waiting_behind_it_as_having_cpu_to_spare(tmp_path, monkeypatch):
    """Bob's engine tells each frame's pipeline whether post-processing limits the link (every frame slot was busy,
    or device frames wait behind it) or the CPU waits for photons (an "auto" decoder may spend it:
    ldpc_plan.decoder_for), the rest of his settings unchanged; the pipeline hands the flag to his LdpcBob (a
    recording subclass of the real class)."""
    from qkdd.link.engine import LinkEngine
    from qkdd.link_channel import LinkChannel

    async def main():
        channel = LinkChannel(LINK, fast_settings(LINK, listen=("127.0.0.1", 0)), generate_identity(),
                              generate_identity().public_key())
        store = KeyStore(str(tmp_path / "b.db"), bytes(32))
        engine = LinkEngine(LINK, BOB, SimBobDevice(host="127.0.0.1", port=9), store, channel, settings=LDPC)
        spare, busy = (PipelineSettings(reconciliation="ldpc", ldpc_spare_cpu=flag) for flag in (True, False))
        assert engine._next_frame_settings(saturated=False) == spare
        assert engine._next_frame_settings(saturated=True) == busy       # every frame slot was busy
        engine._bob_frames_in.send_nowait(object())             # a frame waits in the device's buffer
        assert engine._next_frame_settings(saturated=False) == busy
    trio.run(main)

    seen = record_bob_option(monkeypatch, "spare_cpu")
    for spare in (True, False):
        alice, bob, decoy = frame_pair(simulator(25.0, seed=9), 1000)
        ends = Ends(alice, bob, decoy, settings=LDPC,
                    bob_settings=PipelineSettings(reconciliation="ldpc", ldpc_spare_cpu=spare)).run()
        (a_store,), (b_store,) = ends.of(ALICE, StorePending), ends.of(BOB, StorePending)
        assert a_store.keys == b_store.keys and a_store.keys
    assert seen == [True, False]


def test_two_engines_with_ldpc_store_the_same_keys(tmp_path):
    async def main():
        alice_id, bob_id = generate_identity(), generate_identity()
        source = SimAliceDevice(SimParams(distance_km=25.0, **TEST_SOURCE), listen_port=0,
                                frame_slots=MAX_FRAME_SLOTS, max_detections=TEST_DETECTIONS, realtime=False, seed=11)
        stores = {role: KeyStore(str(tmp_path / f"{role}.db"), bytes(32)) for role in ("alice", "bob")}
        async with trio.open_nursery() as nursery:
            alice = LinkEnd(LINK, "alice", source, stores["alice"], fast_settings(LINK, listen=("127.0.0.1", 0)),
                            alice_id, bob_id.public_key(), settings=LDPC)
            await alice.start(nursery)
            bob = LinkEnd(LINK, "bob", SimBobDevice(host="127.0.0.1", port=source.address[1]), stores["bob"],
                          fast_settings(LINK, dial=("127.0.0.1", alice.listen_port)), bob_id,
                          alice_id.public_key(), settings=LDPC)
            await bob.start(nursery)
            with trio.fail_after(90):
                while not (alice.status.frames_done >= 2 and alice.status.totals["keys"] >= 20
                           and bob.status.totals["keys"] >= 20):
                    await trio.sleep(0.05)
            a_inv, b_inv = stores["alice"].inventory(LINK), stores["bob"].inventory(LINK)
            committed = [k for k, s in a_inv.items() if s is KeyState.AVAILABLE]
            assert len(committed) >= 20
            compared = 0
            for key_id in committed:
                if b_inv.get(key_id) in (KeyState.AVAILABLE, KeyState.PENDING):
                    assert stores["alice"].peek(LINK, key_id).material == stores["bob"].peek(LINK, key_id).material
                    compared += 1
            assert compared >= 20
            key = await alice.keys.request_key(256)
            assert (await bob.keys.fetch_key(key.key_id)).material == key.material
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_a_long_frame_of_mixed_intensity_classes_reconciles():
    """A frame of the daemon's default sim source at 10 km, long enough for the long codes (Z = 512, at most two
    reveal rounds): its key bits are the concatenated intensity classes, the decoy class at a higher error rate
    than the signal. Each codeword takes bits from all of them (ldpc.interleave); taken in frame order, one
    codeword of this frame sat on the noisier run and failed after both reveal rounds."""
    sim = Simulator(SimConfig(distance_km=10.0).params("bb84"), seed=21)
    alice, bob, decoy = frame_pair(sim, 1001, detections=700_000)
    ends = Ends(alice, bob, decoy, settings=LDPC).run()
    a, b = ends.outcome(ALICE), ends.outcome(BOB)
    assert a.aborted is None and b.aborted is None
    assert a.sifted_key_bits >= ldpc_plan.LONG_FRAME_BITS
    (a_store,), (b_store,) = ends.of(ALICE, StorePending), ends.of(BOB, StorePending)
    assert a_store.keys == b_store.keys and a_store.keys

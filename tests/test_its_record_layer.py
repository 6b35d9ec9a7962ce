"""auth "its" on the wire: the frame path's records carry no post-quantum session MAC (TRANSCRIPT_DATA), so a
tampered frame record gets past the record layer and is caught by the Wegman-Carter transcript tags; with
"both" the same tampering is caught by the session MAC first. Record-layer units, then two link engines over
real parts (TLS, sim devices over TCP, SQLite stores and pools) with a TLS-terminating man in the middle."""

import pytest
import trio

from qkdd.link import envelope
from qkdd.link.linkmsg import AbortReason
from qkdd.link.pipeline import PipelineSettings
from qkdd.link_channel import PIPELINE_CHANNEL, RESERVATION_CHANNEL
from qkdd.peer.errors import RecordError
from qkdd.peer.framing import HEADER_BYTES, Frame, FrameType
from qkdd.peer.records import CHANNEL, MAC_BYTES, SEQ, RecordOpener, RecordSealer
from tests.peer_harness import frame_rewriting_proxy
from tests.test_its_engine import pools_for
from tests.test_link_engine import start_pair, wait_for

KEY = bytes(range(32))
ITS_CHANNELS = frozenset({PIPELINE_CHANNEL})


def test_its_records_of_the_frame_path_carry_no_session_mac_and_others_keep_it():
    payload = b"frame record"
    its, both = RecordSealer(KEY, ITS_CHANNELS), RecordSealer(KEY)
    plain, maced = its.data(PIPELINE_CHANNEL, payload), both.data(PIPELINE_CHANNEL, payload)
    assert plain.type is FrameType.TRANSCRIPT_DATA and maced.type is FrameType.DATA
    assert len(plain.to_bytes()) == HEADER_BYTES + SEQ.size + CHANNEL.size + len(payload)
    assert len(maced.to_bytes()) == len(plain.to_bytes()) + MAC_BYTES
    assert its.data(RESERVATION_CHANNEL, payload).type is FrameType.DATA     # key management keeps the MAC
    record = RecordOpener(KEY, ITS_CHANNELS).open(plain)
    assert (record.seq, record.channel, record.payload) == (0, PIPELINE_CHANNEL, payload)


def test_a_flipped_frame_record_bit_passes_the_its_record_layer_and_fails_the_both_mac():
    altered = bytearray(RecordSealer(KEY, ITS_CHANNELS).data(PIPELINE_CHANNEL, b"parities").body)
    altered[-1] ^= 1
    assert RecordOpener(KEY, ITS_CHANNELS).open(Frame(FrameType.TRANSCRIPT_DATA, bytes(altered))).payload \
        == b"paritier"                                  # for the transcript tags to judge
    altered = bytearray(RecordSealer(KEY).data(PIPELINE_CHANNEL, b"parities").body)
    altered[SEQ.size + CHANNEL.size] ^= 1
    with pytest.raises(RecordError, match="MAC check failed"):
        RecordOpener(KEY).open(Frame(FrameType.DATA, bytes(altered)))


def test_ends_with_different_auth_settings_are_told_so_and_unmaced_records_reach_no_other_channel():
    with pytest.raises(RecordError, match="auth settings differ"):
        RecordOpener(KEY).open(RecordSealer(KEY, ITS_CHANNELS).data(PIPELINE_CHANNEL, b"x"))
    with pytest.raises(RecordError, match="auth settings differ"):
        RecordOpener(KEY, ITS_CHANNELS).open(RecordSealer(KEY).data(PIPELINE_CHANNEL, b"x"))
    # a MAC-less record relabelled to a key-management channel is refused, whatever the payload
    forged = Frame(FrameType.TRANSCRIPT_DATA, SEQ.pack(0) + CHANNEL.pack(RESERVATION_CHANNEL) + b"RESERVE")
    with pytest.raises(RecordError, match="channel 21075"):
        RecordOpener(KEY, ITS_CHANNELS).open(forged)
    gap = Frame(FrameType.TRANSCRIPT_DATA, SEQ.pack(1) + CHANNEL.pack(PIPELINE_CHANNEL))
    with pytest.raises(RecordError, match="sequence number 1, expected 0"):
        RecordOpener(KEY, ITS_CHANNELS).open(gap)


class ErrorsFlipper:
    """Bob-to-Alice frames through the man in the middle: notes the frame types of the frame path's records
    and flips a bit of Bob's first ESTIMATE(ERRORS) count (a change no parser can see), keeping any MAC."""

    def __init__(self):
        self.pipeline_types: set[FrameType] = set()
        self.flipped_frame_id = None

    def __call__(self, frame: Frame):
        if frame.type not in (FrameType.DATA, FrameType.TRANSCRIPT_DATA):
            return [frame.to_bytes()]
        (channel,) = CHANNEL.unpack_from(frame.body, SEQ.size)
        if channel != PIPELINE_CHANNEL:
            return [frame.to_bytes()]
        self.pipeline_types.add(frame.type)
        mac_bytes = MAC_BYTES if frame.type is FrameType.DATA else 0
        head, payload = frame.body[:SEQ.size + CHANNEL.size], frame.body[SEQ.size + CHANNEL.size:]
        payload, mac = payload[:len(payload) - mac_bytes], payload[len(payload) - mac_bytes:]
        frame_id, parts = envelope.decode(payload)
        if self.flipped_frame_id is not None or parts[0][0] != envelope.Step.ESTIMATE:
            return [frame.to_bytes()]
        self.flipped_frame_id = frame_id
        errors = bytearray(parts[0][1])
        errors[0] ^= 1                                      # class 0's Z error count, +-1
        altered = envelope.encode(frame_id, [(parts[0][0], bytes(errors)), *parts[1:]])
        return [Frame(frame.type, head + altered + mac).to_bytes()]


@pytest.mark.parametrize("auth", ["its", "both"])
def test_a_tampered_frame_record_is_rejected_by_the_its_tag_in_its_and_by_the_pq_mac_in_both(tmp_path, auth):
    pools = pools_for(tmp_path, 40)
    settings = PipelineSettings(auth=auth, auth_refill_bits=1024)
    flipper = ErrorsFlipper()
    outcomes = {"alice": [], "bob": []}

    def observed(role, end):
        record = end.status.record
        end.status.record = lambda outcome: (outcomes[role].append(outcome), record(outcome))[1]

    async def main():
        async with trio.open_nursery() as nursery:
            alice, bob, _, stores = await start_pair(
                nursery, tmp_path, before_run=observed,
                engine_options=lambda role: dict(settings=settings, auth_pool=pools[role]),
                via=lambda port: nursery.start(frame_rewriting_proxy, port, flipper),
                transcript_channels=ITS_CHANNELS if auth == "its" else frozenset())
            await wait_for(lambda: flipper.flipped_frame_id is not None)
            if auth == "its":                   # Bob has judged the tampered frame (frames run side by side)
                await wait_for(lambda: any(o.frame_id == flipper.flipped_frame_id for o in outcomes["bob"]))
            await wait_for(lambda: any(o.frame_id > flipper.flipped_frame_id and o.keys for o in outcomes["alice"])
                           and alice.channel.ready and bob.channel.ready)
            epochs = alice.channel.session.epoch, bob.channel.session.epoch
            nursery.cancel_scope.cancel()
        return epochs

    epochs = trio.run(main)
    tampered = [o for role in outcomes for o in outcomes[role] if o.frame_id == flipper.flipped_frame_id]
    if auth == "its":
        assert flipper.pipeline_types == {FrameType.TRANSCRIPT_DATA}      # no session MAC on the frame path
        # the altered count reached Alice; Bob's check of her TAG_A over her transcript refused the frame,
        # and the session (its MAC-checked key management) stayed up
        bob_view = [o for o in tampered if o.role == "bob"]
        assert bob_view and bob_view[0].abort_code == AbortReason.AUTH and not bob_view[0].aborted_by_peer
        assert "transcript tag does not match" in bob_view[0].aborted
        assert epochs == (1, 1)
        # the refused frame's chunks are spent at both ends, never named again; the pools do not diverge
        assert set(pools["alice"].positions()) <= set(pools["bob"].positions())
    else:
        assert flipper.pipeline_types == {FrameType.DATA}
        # the session MAC refused the record before any pipeline saw it: a new session, no AUTH abort
        assert all(o.abort_code != AbortReason.AUTH for role in outcomes for o in outcomes[role])
        assert epochs[0] >= 2 and epochs[1] >= 2

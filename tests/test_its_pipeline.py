"""Links with auth "its": both ends of the frame pipeline in memory on simulator frames, each end with its
own authentication pool (a real SQLite file). Identical keys, the refill before the keys, equal pool
accounting, and a flipped bit in any post-processing record aborts the frame before either end commits."""
import random

import pytest

from qkdd.auth import secret as auth_secret
from qkdd.auth.pool import AuthPool
from qkdd.auth.wegman_carter import CHUNKS_PER_FRAME
from qkdd.link import envelope, linkmsg
from qkdd.link.pipeline import (ALICE, BOB, Commit, Discard, Finished, FramePipeline, PipelineSettings, Send,
                                StorePending)
from tests.link_support import frame_pair, simulator

KEK = bytes(range(32))
ITS = PipelineSettings(auth="its", auth_refill_bits=1024)


class ItsEnds:
    """Both ends of one frame back to back, each with its pool; `tamper(index, role, record)` may alter the
    index-th record in flight."""

    def __init__(self, frames, pools, settings=ITS):
        alice_frame, bob_frame, decoy = frames
        self.pipes = {ALICE: FramePipeline(ALICE, alice_frame, settings, decoy=decoy, auth_pool=pools[ALICE]),
                      BOB: FramePipeline(BOB, bob_frame, settings, auth_pool=pools[BOB])}
        self.actions = {ALICE: [], BOB: []}
        self.records = []

    def run(self, tamper=None):
        queue = [(BOB, a) for a in self.pipes[BOB].start()]
        while queue:
            role, action = queue.pop(0)
            self.actions[role].append(action)
            if isinstance(action, Send):
                record = action.record
                if tamper is not None:
                    record = tamper(len(self.records), role, record)
                self.records.append((role, action.record))
                peer = ALICE if role == BOB else BOB
                queue.extend((peer, a) for a in self.pipes[peer].receive(record))
        return self

    def of(self, role, kind):
        return [a for a in self.actions[role] if isinstance(a, kind)]

    def outcome(self, role):
        (finished,) = self.of(role, Finished)
        return finished.outcome


@pytest.fixture
def pools(tmp_path):
    secret = auth_secret.generate("its-1", 128 * 60)
    made = {role: AuthPool(str(tmp_path / f"pool-{role}.sqlite3"), KEK, "its-1") for role in (ALICE, BOB)}
    for pool in made.values():
        pool.seed(secret)
    yield made
    for pool in made.values():
        pool.close()


@pytest.fixture(scope="module")
def frames():
    sim = simulator(25.0, seed=21)
    return [frame_pair(sim, 500 + i) for i in range(3)]


def test_its_frames_store_identical_keys_and_keep_the_pools_equal(pools, frames):
    before = pools[ALICE].bits
    for frame in frames:
        ends = ItsEnds(frame, pools).run()
        (a_store,), (b_store,) = ends.of(ALICE, StorePending), ends.of(BOB, StorePending)
        assert a_store.keys == b_store.keys and len(a_store.keys) > 5
        a, b = ends.outcome(ALICE), ends.outcome(BOB)
        assert a.aborted is None and b.aborted is None
        assert a.auth_bits_consumed == b.auth_bits_consumed == 128 * CHUNKS_PER_FRAME
        assert a.auth_bits_refilled == b.auth_bits_refilled == 1024
        assert 0 < a.eps_auth < 1e-20
        assert a.eps_total == pytest.approx(2 * ITS.eps_sec + ITS.eps_cor + a.eps_auth)
        # the refill came off the top of the output: the keys are the rest, whole keys
        assert a.secret_bits + a.auth_bits_refilled <= a.key_length_bits
        steps = [[s for s, _ in envelope.decode(r)[1]] for _, r in ends.records]
        assert [envelope.Step.VERIFY, envelope.Step.AMPLIFY, envelope.Step.KEYS, envelope.Step.AUTH] in steps
        assert [envelope.Step.AMPLIFY, envelope.Step.AUTH] in steps
    assert pools[ALICE].positions() == pools[BOB].positions()
    assert pools[ALICE].consumed_bits == pools[BOB].consumed_bits == 3 * 128 * CHUNKS_PER_FRAME
    assert pools[ALICE].bits == pools[BOB].bits == before + 3 * (1024 - 128 * CHUNKS_PER_FRAME)


def flip(seen_index, rng, seen):
    def tamper(index, role, record):
        if index != seen_index:
            return record
        seen.append(envelope.decode(record)[1][0][0])
        altered = bytearray(record)
        bit = rng.randrange(8 * len(altered))
        altered[bit // 8] ^= 1 << (bit % 8)
        return bytes(altered)
    return tamper


def test_a_flipped_bit_in_any_record_aborts_the_frame_before_either_end_commits(pools, frames):
    reference = ItsEnds(frames[0], pools).run()
    kinds = {}
    for index, (_, record) in enumerate(reference.records):
        step = envelope.decode(record)[1][0][0]
        kinds.setdefault(step, []).append(index)
    rng = random.Random(19)
    # every kind of record (its first, last and a middle one), and some random ones
    chosen = sorted({i for indices in kinds.values() for i in (indices[0], indices[len(indices) // 2], indices[-1])}
                    | set(rng.sample(range(len(reference.records)), 6)))
    assert len(kinds) >= 7 and len(chosen) >= 12
    codes = set()
    for index in chosen:
        seen = []
        ends = ItsEnds(frames[0], pools).run(tamper=flip(index, rng, seen))
        if not seen:
            continue                                # this run ended before its index-th record
        b = ends.outcome(BOB)
        codes.add(b.abort_code)
        assert b.aborted, f"record {index} ({seen[0].name}) altered, frame not aborted at Bob"
        assert not ends.of(BOB, Commit), f"record {index} ({seen[0].name}) altered, Bob committed"
        if seen[0] != envelope.Step.COMMIT:         # COMMIT comes after Alice committed; TAG_C fails at Bob
            assert ends.outcome(ALICE).aborted, f"record {index} ({seen[0].name}) altered, Alice went on"
            assert not ends.of(ALICE, Commit), f"record {index} ({seen[0].name}) altered, Alice committed"
        if ends.of(BOB, StorePending):
            assert ends.of(BOB, Discard)
    # a change the parsers cannot see (a bit of a count, a revealed bit, a parity) is what the tags catch
    assert linkmsg.AbortReason.AUTH in codes
    assert pools[ALICE].chunks > 0


def test_without_its_an_altered_test_bit_goes_unnoticed(frames):
    """The contrast: with auth "pq" only the peer session's MAC protects the records; altered in memory
    past it, Alice's revealed test bits change Bob's error count and the frame still stores keys. With
    "its" the same change aborts it (previous test)."""
    def tamper(index, role, record):
        _, parts = envelope.decode(record)
        if role != ALICE or parts[0][0] != envelope.Step.ESTIMATE:
            return record
        altered = bytearray(record)
        # envelope and part headers (16 + 8), the decoy settings and counts (72), class 0's bit count (8):
        altered[104] ^= 0x01                       # her first revealed test bit
        return bytes(altered)
    alice_frame, bob_frame, decoy = frames[1]
    pipes = {ALICE: FramePipeline(ALICE, alice_frame, decoy=decoy), BOB: FramePipeline(BOB, bob_frame)}
    queue, stored, outcomes = [(BOB, a) for a in pipes[BOB].start()], {ALICE: 0, BOB: 0}, {}
    while queue:
        role, action = queue.pop(0)
        if isinstance(action, Commit):
            stored[role] += 1
        if isinstance(action, Finished):
            outcomes[role] = action.outcome
        if isinstance(action, Send):
            peer = ALICE if role == BOB else BOB
            queue.extend((peer, a) for a in pipes[peer].receive(tamper(0, role, action.record)))
    assert stored == {ALICE: 1, BOB: 1}, outcomes


def test_a_dry_pool_refuses_the_frame_with_auth_pool(tmp_path, frames):
    secret = auth_secret.generate("its-1", 128 * CHUNKS_PER_FRAME)
    pools = {role: AuthPool(str(tmp_path / f"dry-{role}.sqlite3"), KEK, "its-1") for role in (ALICE, BOB)}
    for pool in pools.values():
        pool.seed(secret)
    settings = PipelineSettings(auth="its", auth_refill_bits=0)
    assert ItsEnds(frames[2], pools, settings).run().outcome(ALICE).aborted is None
    ends = ItsEnds(frames[2], pools, settings).run()
    assert ends.outcome(ALICE).abort_code == linkmsg.AbortReason.AUTH_POOL
    assert ends.outcome(BOB).abort_code == linkmsg.AbortReason.AUTH_POOL and ends.outcome(BOB).aborted_by_peer
    assert not ends.of(ALICE, StorePending) and not ends.of(BOB, StorePending)
    for pool in pools.values():
        pool.close()


def test_its_needs_a_pool_and_a_known_mode():
    with pytest.raises(ValueError, match="auth must be"):
        PipelineSettings(auth="hmac")
    with pytest.raises(ValueError, match="multiple of 128"):
        PipelineSettings(auth="its", auth_refill_bits=100)


def test_ends_with_different_auth_settings_say_so(pools, frames):
    alice_frame, bob_frame, decoy = frames[2]
    pipes = {ALICE: FramePipeline(ALICE, alice_frame, ITS, decoy=decoy, auth_pool=pools[ALICE]),
             BOB: FramePipeline(BOB, bob_frame)}
    queue, outcomes = [(BOB, a) for a in pipes[BOB].start()], {}
    while queue:
        role, action = queue.pop(0)
        if isinstance(action, Finished):
            outcomes[role] = action.outcome
        if isinstance(action, Send):
            peer = ALICE if role == BOB else BOB
            queue.extend((peer, a) for a in pipes[peer].receive(action.record))
    assert "auth settings differ" in outcomes[BOB].aborted
    assert outcomes[ALICE].aborted_by_peer


def test_its_with_ldpc_reconciliation(pools, frames):
    settings = PipelineSettings(auth="its", reconciliation="ldpc")
    ends = ItsEnds(frames[1], pools, settings).run()
    (a_store,), (b_store,) = ends.of(ALICE, StorePending), ends.of(BOB, StorePending)
    assert a_store.keys == b_store.keys and a_store.keys
    assert ends.outcome(ALICE).auth_bits_consumed == ends.outcome(BOB).auth_bits_consumed == 128 * CHUNKS_PER_FRAME
    assert pools[ALICE].positions() == pools[BOB].positions()


def test_a_tampered_or_forged_commit_is_refused_by_its_tag_and_bob_discards(pools, frames):
    """COMMIT decides whether Bob's PENDING keys become keys: Alice's TAG_C covers it, and Bob checks it before
    he commits (a changed tag bit, a COMMIT with a made-up tag, a COMMIT without its tag)."""
    def commit_record(record):
        return envelope.decode(record)[1][0][0] == envelope.Step.COMMIT

    def flip_tag_bit(index, role, record):
        if not commit_record(record):
            return record
        altered = bytearray(record)
        altered[-3] ^= 0x10                             # a bit of TAG_C
        return bytes(altered)

    def made_up_tag(index, role, record):
        if not commit_record(record):
            return record
        frame_id, parts = envelope.decode(record)
        return envelope.encode(frame_id, [parts[0], (envelope.Step.AUTH, bytes(parts[1][1])[:8] + bytes(16))])

    def untagged(index, role, record):
        if not commit_record(record):
            return record
        frame_id, parts = envelope.decode(record)
        return envelope.encode(frame_id, [parts[0]])

    for tamper, code in ((flip_tag_bit, linkmsg.AbortReason.AUTH), (made_up_tag, linkmsg.AbortReason.AUTH),
                         (untagged, linkmsg.AbortReason.PROTOCOL)):
        ends = ItsEnds(frames[0], pools).run(tamper=tamper)
        b = ends.outcome(BOB)
        assert ends.of(ALICE, Commit) and ends.outcome(ALICE).aborted is None   # she had committed before
        assert b.abort_code == code, (tamper.__name__, b.aborted)
        assert ends.of(BOB, StorePending) and ends.of(BOB, Discard) and not ends.of(BOB, Commit), tamper.__name__
    assert "COMMIT tag does not match" in ItsEnds(frames[0], pools).run(tamper=flip_tag_bit).outcome(BOB).aborted
    # untouched, the same frame commits at both ends
    ends = ItsEnds(frames[0], pools).run()
    assert ends.of(BOB, Commit) and ends.of(ALICE, Commit)

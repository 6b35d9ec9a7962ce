"""Resynchronisation of two key stores after a crash: plans, messages, and convergence."""
import os
import shutil
import struct
import time
import uuid

import pytest
from hypothesis import given, settings, strategies as st

from qkdd.keystore import KeyAlreadyDelivered, KeyState, KeyStore, create_kek
from qkdd.keystore.kek import load_kek
from qkdd.keystore.resync import (FrameSummary, InventoryAssembler, ResyncMessageError, SummaryAssembler,
                                  decode_hello, decode_inventory, decode_summaries, encode_hello,
                                  encode_inventory, encode_summaries, frames_to_list, plan_resync, resync_scope)

LINK = "link-ab"


def keys(n):
    return [(str(uuid.uuid4()), os.urandom(32)) for _ in range(n)]


@pytest.fixture
def ends(tmp_path):
    alice = KeyStore(str(tmp_path / "a.db"), create_kek(str(tmp_path / "a.kek")))
    bob = KeyStore(str(tmp_path / "b.db"), create_kek(str(tmp_path / "b.kek")))
    yield alice, bob
    alice.close()
    bob.close()


def resync(alice, bob, *, apply_at=None, full=False):
    """Both ends exchange resynchronisation points, frame summaries, then the inventories of the frames
    those leave open, through the wire formats (as qkdd.link.inventory does), and apply their own plans
    (only `apply_at`'s when given: the other crashed first). The number of keys listed."""
    points = {store: store.resync_point(LINK) for store in (alice, bob)}
    peer = {store: decode_hello(encode_hello(LINK, points[other], 120), LINK)        # several messages each
            for store, other in ((alice, bob), (bob, alice))}
    scope = None if full else resync_scope(points[alice], peer[alice])
    assert full or scope == resync_scope(points[bob], peer[bob])    # both ends choose the same scope
    resync.last_scope = scope
    summaries = {store: store.frame_summaries(LINK, scope) for store in (alice, bob)}
    wire = {store: encode_summaries(LINK, summaries[store], 1024) for store in (alice, bob)}
    frames = {store: frames_to_list(summaries[store], decode_summaries(wire[other], LINK))
              for store, other in ((alice, bob), (bob, alice))}
    assert frames[alice] == frames[bob]                             # both ends choose the same frames
    local = {store: store.inventory(LINK, frames[store]) for store in (alice, bob)}
    msg = {store: encode_inventory(LINK, local[store], 1024) for store in (alice, bob)}   # several messages each
    for store, other in ((alice, bob), (bob, alice)):
        plan = plan_resync(local[store], decode_inventory(msg[other], LINK))
        if apply_at in (None, store):         # (`full`: as before resynchronisation points existed)
            store.apply_resync(LINK, plan.promote, plan.discard, plan.expire, peer=None if full else peer[store],
                               scope=scope)
    return len(local[alice]) + len(local[bob])


def usable(store):
    return {k for k, s in store.inventory(LINK).items() if s.holds_material and s is not KeyState.PENDING}


def test_crash_between_store_and_commit_converges(ends):
    alice, bob = ends
    expiry = time.time() + 3600
    f1, f2, f3, f4 = keys(4), keys(4), keys(4), keys(4)
    for store in (alice, bob):                       # frame 1: done at both ends
        store.put_pending(LINK, 1, f1, expires_at=expiry)
        store.commit_frame(LINK, 1)
    alice.put_pending(LINK, 2, f2, expires_at=expiry)   # frame 2: Alice committed, Bob crashed before commit
    alice.commit_frame(LINK, 2)
    bob.put_pending(LINK, 2, f2, expires_at=expiry)
    alice.put_pending(LINK, 3, f3, expires_at=expiry)   # frame 3: Bob never stored it
    bob.put_pending(LINK, 4, f4, expires_at=expiry)     # frame 4: Alice never stored it
    delivered = alice.deliver(LINK, f1[0][0])           # delivered at Alice before the crash

    resync(alice, bob)

    ids = lambda frame: {k for k, _ in frame}  # noqa: E731
    assert usable(alice) == ids(f1[1:]) | ids(f2)
    assert usable(bob) == ids(f1) | ids(f2)              # nothing lost that the other end kept
    assert not ({k for k, _ in f3 + f4} & (usable(alice) | usable(bob)))
    with pytest.raises(KeyAlreadyDelivered):            # never handed out twice at the same end
        alice.deliver(LINK, delivered.key_id)
    assert bob.deliver(LINK, delivered.key_id).material == delivered.material   # the other SAE's copy
    for key_id, material in f2:
        assert alice.peek(LINK, key_id).material == bob.peek(LINK, key_id).material == material
    resync(alice, bob)                                  # idempotent
    assert {k for k, _ in f2} <= usable(alice) & usable(bob)


def test_expiry_at_one_end_erases_at_both(ends):
    alice, bob = ends
    f1 = keys(2)
    alice.put_pending(LINK, 1, f1, expires_at=time.time() + 60)
    bob.put_pending(LINK, 1, f1, expires_at=time.time() + 3600)   # clocks disagree
    for store in (alice, bob):
        store.commit_frame(LINK, 1)
    assert alice.expire(now=time.time() + 61) == 2                 # Alice's keys expire; Bob's would not yet
    resync(alice, bob)
    assert bob.counts(LINK)[KeyState.EXPIRED] == 2


def test_plan_table():
    a, b, c, d = (str(uuid.uuid4()) for _ in range(4))
    plan = plan_resync({a: KeyState.PENDING, b: KeyState.AVAILABLE, c: KeyState.RESERVED, d: KeyState.DELIVERED},
                       {a: KeyState.DELIVERED, c: KeyState.EXPIRED})
    assert plan.promote == [a] and plan.discard == [b] and plan.expire == [c]


def test_inventory_messages_reject_bad_input():
    k = str(uuid.uuid4())
    [msg] = encode_inventory(LINK, {k: KeyState.AVAILABLE})
    assert decode_inventory([msg], LINK) == {k: KeyState.AVAILABLE}
    fixed = 7 + len(LINK)                       # magic, version, link id length, link id
    cases = {
        "truncated in its header": msg[:3],
        "not an inventory": b"XXXX" + msg[4:],
        "version 9": msg[:4] + b"\x09" + msg[5:],
        "does not match": msg[:-1],
        "expected": encode_inventory("other", {})[0],
        "unknown state code": msg[:-1] + b"\x63",
        "twice": msg[:-21] + struct.pack(">I", 2) + msg[-17:] * 2,
        "more than": msg[:fixed + 1] + struct.pack(">I", 0xFFFFFFFF),
        "last-message flag": msg[:fixed] + b"\x07" + msg[fixed + 1:],
    }
    for expected, bad in cases.items():
        with pytest.raises(ResyncMessageError, match=expected):
            decode_inventory([bad], LINK)
    with pytest.raises(ResyncMessageError, match="after the last"):
        decode_inventory([msg, msg], LINK)
    not_last = msg[:fixed] + b"\x00" + msg[fixed + 1:]
    with pytest.raises(ResyncMessageError, match="without its last"):
        decode_inventory([not_last], LINK)
    with pytest.raises(ResyncMessageError, match="twice"):          # across messages too
        decode_inventory([not_last, msg], LINK)
    [fixed_empty] = encode_inventory(LINK, {})
    empty_not_last = fixed_empty[:fixed] + b"\x00" + fixed_empty[fixed + 1:]
    with pytest.raises(ResyncMessageError, match="empty inventory message"):   # no endless empty stream
        decode_inventory([empty_not_last], LINK)


def test_a_large_inventory_goes_out_in_messages_that_each_fit_the_record_cap():
    inventory = {str(uuid.uuid4()): state for state in KeyState for _ in range(2000)}
    cap_bytes = 16 * 1024                        # the smallest record cap the peer channel allows
    messages = encode_inventory(LINK, inventory, cap_bytes)
    assert len(messages) == -(-len(inventory) // ((cap_bytes - 12 - len(LINK)) // 17)) > 1
    assert all(len(message) <= cap_bytes for message in messages)
    assert decode_inventory(messages, LINK) == inventory
    assert [message[7 + len(LINK)] for message in messages] == [0] * (len(messages) - 1) + [1]
    # the default fits one default peer record (64 MiB less the record's own 42 bytes)
    from qkdd.peer.framing import DEFAULT_MAX_RECORD_BYTES
    from qkdd.peer.records import RECORD_OVERHEAD_BYTES
    from qkdd.keystore.resync import DEFAULT_MAX_MESSAGE_BYTES
    assert DEFAULT_MAX_MESSAGE_BYTES == DEFAULT_MAX_RECORD_BYTES - RECORD_OVERHEAD_BYTES
    assert encode_inventory(LINK, {}) != [] and decode_inventory(encode_inventory(LINK, {}), LINK) == {}
    with pytest.raises(ResyncMessageError, match="cannot hold one key"):
        encode_inventory(LINK, inventory, 20)


def test_tombstones_are_purged_only_past_expiry_plus_grace_and_resync_still_converges(ends):
    from qkdd.keystore.resync import TOMBSTONE_GRACE_S

    alice, bob = ends
    now = time.time()
    old, young = keys(3), keys(3)
    for frame, batch, expires_at in ((1, old, now - TOMBSTONE_GRACE_S - 1), (2, young, now + 3600)):
        for store in ends:
            store.put_pending(LINK, frame, batch, expires_at=expires_at, created_at=now - 7200)
            store.commit_frame(LINK, frame)
    # Alice delivered one old and one young key; Bob still holds them (say, for his SAE)
    alice.deliver(LINK, young[0][0])
    alice.expire()                               # the old keys are past expiry: tombstones at Alice
    assert alice.purge_tombstones() == 3         # only the old ones: the young tombstone is still needed
    assert set(alice.inventory(LINK)) == {k for k, _ in young}
    assert alice.state(LINK, young[0][0]) is KeyState.DELIVERED
    resync(alice, bob)
    # Bob keeps what Alice still holds, drops the delivered-and-purged old keys (expired anyway), and the
    # young delivered key stays usable at Bob: its tombstone at Alice was kept for exactly this
    assert usable(bob) == {k for k, _ in young}
    assert not {k for k, _ in old} & set(bob.inventory(LINK))
    assert alice.purge_tombstones() == 0


_INVENTORY = {str(uuid.UUID(int=i * 0x1F3D5B79 + 7, version=4)): state
              for i, state in enumerate(list(KeyState) * 3)}
_MESSAGES = encode_inventory(LINK, _INVENTORY, 7 + len(LINK) + 5 + 17 * 4)       # 4 keys per message


@st.composite
def mangled_inventory(draw) -> list[bytes]:
    messages = [bytearray(m) for m in _MESSAGES]
    for _ in range(draw(st.integers(1, 3))):
        which = draw(st.integers(0, len(messages) - 1))
        data = messages[which]
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["flip", "cut", "insert", "count", "drop", "repeat", "random"]))
        if edit == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "cut":
            del data[at:]
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=17))
        elif edit == "count":
            data[at:at + 4] = draw(st.sampled_from([0, 1, 2**31, 2**32 - 1])).to_bytes(4, "big")
        elif edit == "drop" and len(messages) > 1:
            del messages[which]
        elif edit == "repeat":
            messages.insert(which, bytearray(data))
        else:
            messages[which] = bytearray(draw(st.binary(max_size=40)))
    return [bytes(m) for m in messages]


@settings(max_examples=300, deadline=None)
@given(mangled_inventory())
def test_a_mangled_inventory_is_refused_or_lists_only_well_formed_keys(messages):
    assembler = InventoryAssembler(LINK)
    try:
        for message in messages:
            assembler.add(message)
    except ResyncMessageError:
        return
    assert len(assembler.inventory) <= len(_INVENTORY) + 4 * len(messages)
    assert all(str(uuid.UUID(key_id)) == key_id and isinstance(state, KeyState)
               for key_id, state in assembler.inventory.items())


# ---- the frame summaries: only the frames that may change are listed key by key --------------------------
def reference_summaries(inventory: dict[str, KeyState], frame_of: dict[str, int]) -> dict[int, FrameSummary]:
    """FrameSummary per frame computed in Python from an inventory, to check the store's aggregate query."""
    frames: dict[int, list[tuple[str, KeyState]]] = {}
    for key_id, state in inventory.items():
        frames.setdefault(frame_of[key_id], []).append((key_id, state))
    return {frame_id: FrameSummary(len(rows), sum(s is KeyState.PENDING for _, s in rows),
                                   sum(s.holds_material for _, s in rows), sum(s is KeyState.EXPIRED for _, s in rows),
                                   min(k for k, _ in rows), max(k for k, _ in rows))
            for frame_id, rows in frames.items()}


def test_the_store_summarises_each_frame_as_its_inventory_says(ends):
    alice, _ = ends
    frame_of, now = {}, time.time()
    for frame_id in range(1, 7):
        batch = keys(5)
        frame_of.update((k, frame_id) for k, _ in batch)
        alice.put_pending(LINK, frame_id, batch, expires_at=now + (60 if frame_id == 5 else 3600))
        if frame_id != 6:
            alice.commit_frame(LINK, frame_id)
        if frame_id == 2:
            alice.deliver(LINK, batch[0][0])
            alice.reserve_ids(LINK, [batch[1][0]], "x")
    alice.expire(now=now + 61)                               # frame 5 expires
    assert alice.frame_summaries(LINK) == reference_summaries(alice.inventory(LINK), frame_of)
    assert alice.inventory(LINK, [2, 6]) == {k: s for k, s in alice.inventory(LINK).items() if frame_of[k] in (2, 6)}
    assert alice.inventory(LINK, []) == {}
    many = list(range(1, 1200))                              # more frame ids than one query binds
    assert alice.inventory(LINK, many) == alice.inventory(LINK)


def test_after_a_crash_only_the_unsettled_frames_are_listed(ends):
    alice, bob = ends
    expiry = time.time() + 3600
    for frame_id in range(1, 201):                           # 200 frames done at both ends
        batch = keys(4)
        for store in ends:
            store.put_pending(LINK, frame_id, batch, expires_at=expiry)
            store.commit_frame(LINK, frame_id)
        if frame_id % 3 == 0:
            alice.deliver(LINK, batch[0][0])                 # consumed at one end only: nothing to settle
    crashed = keys(4)
    alice.put_pending(LINK, 201, crashed, expires_at=expiry)   # Alice committed, Bob crashed before commit
    alice.commit_frame(LINK, 201)
    bob.put_pending(LINK, 201, crashed, expires_at=expiry)
    assert resync(alice, bob) == 8                           # frame 201's 4 keys at each end, nothing else
    assert {k for k, _ in crashed} <= usable(alice) & usable(bob)
    assert resync(alice, bob) == 0                           # settled


@st.composite
def two_ends(draw):
    """Inventories of two ends over shared frames: each frame absent, pending or committed at each end
    (its keys the same at both), a committed key available, reserved, delivered or expired."""
    local, remote, frame_of = {}, {}, {}
    for frame_id in range(draw(st.integers(0, 8))):
        ids = [str(uuid.UUID(int=draw(st.integers(1, 2**120)), version=4)) for _ in range(draw(st.integers(1, 4)))]
        if len(set(ids)) < len(ids) or set(ids) & set(frame_of):
            continue
        frame_of.update((k, frame_id) for k in ids)
        for inventory in (local, remote):
            presence = draw(st.sampled_from(["absent", "pending", "committed"]))
            for key_id in ids:
                if presence == "pending":
                    inventory[key_id] = KeyState.PENDING
                elif presence == "committed":
                    inventory[key_id] = draw(st.sampled_from([KeyState.AVAILABLE, KeyState.RESERVED,
                                                              KeyState.DELIVERED, KeyState.EXPIRED]))
    return local, remote, frame_of


@settings(max_examples=400, deadline=None)
@given(two_ends())
def test_listing_only_the_chosen_frames_plans_exactly_what_listing_every_key_plans(ends_state):
    local, remote, frame_of = ends_state
    summaries = reference_summaries(local, frame_of), reference_summaries(remote, frame_of)
    frames = set(frames_to_list(*summaries))
    assert frames == set(frames_to_list(summaries[1], summaries[0]))
    listed = [{k: s for k, s in inventory.items() if frame_of[k] in frames} for inventory in (local, remote)]
    assert plan_resync(listed[0], listed[1]) == plan_resync(local, remote)
    assert plan_resync(listed[1], listed[0]) == plan_resync(remote, local)


_SUMMARIES = {n: FrameSummary(4, 0, 3, 1, str(uuid.UUID(int=n, version=4)), str(uuid.UUID(int=n + 9, version=4)))
              for n in range(1, 10)}
_SUMMARY_MESSAGES = encode_summaries(LINK, _SUMMARIES, 7 + len(LINK) + 5 + 56 * 4)    # 4 frames per message


def test_summary_messages_round_trip_and_refuse_bad_input():
    assert len(_SUMMARY_MESSAGES) == 3 and decode_summaries(_SUMMARY_MESSAGES, LINK) == _SUMMARIES
    assert decode_summaries(encode_summaries(LINK, {}), LINK) == {}
    bad = {1: FrameSummary(2, 2, 1, 0, str(uuid.UUID(int=1, version=4)), str(uuid.UUID(int=2, version=4)))}
    for messages, words in ((_SUMMARY_MESSAGES[:2], "without its last message"),
                            (_SUMMARY_MESSAGES[:1] * 2 + _SUMMARY_MESSAGES[2:], "twice"),
                            (encode_summaries(LINK, bad), "inconsistent"),
                            (encode_inventory(LINK, {}), "not a summary message"),
                            (encode_summaries("other", _SUMMARIES), "is for link")):
        with pytest.raises(ResyncMessageError, match=words):
            decode_summaries(messages, LINK)
    with pytest.raises(ResyncMessageError, match="not an inventory message"):
        decode_inventory(_SUMMARY_MESSAGES, LINK)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 200), st.binary(max_size=8)), min_size=1, max_size=4))
def test_a_mangled_summary_is_refused_or_holds_only_consistent_frames(edits):
    messages = [bytearray(m) for m in _SUMMARY_MESSAGES]
    for which, at, data in edits:
        messages[which][at:at + len(data)] = data
    assembler = SummaryAssembler(LINK)
    try:
        for message in messages:
            assembler.add(bytes(message))
    except ResyncMessageError:
        return
    for summary in assembler.summaries.values():
        assert 0 < summary.keys and summary.pending <= summary.holding <= summary.keys
        assert summary.holding + summary.expired <= summary.keys and summary.lowest_id <= summary.highest_id


# ---- resynchronisation points: an unchanged store summarises nothing ---------------------------------------
def both_store(ends, frame_id, batch, expiry):
    for store in ends:
        store.put_pending(LINK, frame_id, batch, expires_at=expiry)
        store.commit_frame(LINK, frame_id)


def test_after_an_agreed_resync_only_frames_changed_since_are_summarised(ends):
    alice, bob = ends
    expiry = time.time() + 3600
    for frame_id in range(1, 51):
        both_store(ends, frame_id, keys(4), expiry)
    resync(alice, bob)
    assert resync.last_scope is None                         # the first session: every frame
    assert resync(alice, bob) == 0 and resync.last_scope == []
    both_store(ends, 51, keys(4), expiry)                    # committed at both during a session: settled
    alice.deliver(LINK, next(iter(usable(alice))))           # consumed at one end: nothing to settle
    assert resync(alice, bob) == 0 and resync.last_scope == []
    crashed = keys(4)                                        # Alice committed, Bob crashed before commit
    alice.put_pending(LINK, 52, crashed, expires_at=expiry)
    alice.commit_frame(LINK, 52)
    bob.put_pending(LINK, 52, crashed, expires_at=expiry)
    aborted = keys(4)                                        # stored pending at Bob, then dropped there
    bob.put_pending(LINK, 53, aborted, expires_at=expiry)
    bob.discard_frame(LINK, 53)
    lost = keys(4)                                           # Bob lost the keys of a frame Alice holds
    both_store(ends, 54, lost, expiry)
    bob.apply_resync(LINK, [], [k for k, _ in lost], [])
    assert resync(alice, bob) == 4 + 4 + 4 and resync.last_scope == [52, 53, 54]   # 52 at both, 54 at Alice
    assert {k for k, _ in crashed} <= usable(alice) & usable(bob)
    assert not {k for k, _ in lost} & usable(alice)
    assert resync(alice, bob) == 0 and resync.last_scope == []


def test_a_point_not_agreed_at_both_ends_summarises_every_frame(ends, tmp_path):
    alice, bob = ends
    expiry = time.time() + 3600
    both_store(ends, 1, keys(4), expiry)
    resync(alice, bob)
    resync(alice, bob, apply_at=alice)                       # Bob crashed before applying his plan
    resync(alice, bob)
    assert resync.last_scope is None
    backup = tmp_path / "bob-copy.db"                        # a copy of Bob's store as it is now ...
    shutil.copyfile(bob.path, backup)
    resync(alice, bob)
    assert resync.last_scope == []
    restored = KeyStore(str(backup), load_kek(str(tmp_path / "b.kek")))      # ... restored after a resync
    try:
        resync(alice, restored)
        assert resync.last_scope is None
    finally:
        restored.close()
    fresh = KeyStore(str(tmp_path / "fresh.db"), create_kek(str(tmp_path / "fresh.kek")))   # a new store
    try:
        resync(alice, fresh)
        assert resync.last_scope is None and not usable(alice)     # nothing is held at both ends
    finally:
        fresh.close()


@st.composite
def histories(draw):
    """Sequences of what happens to a link's two stores between and during resynchronisations."""
    steps = st.sampled_from(["both", "alice_committed_bob_pending", "both_pending", "alice_pending_only",
                             "bob_pending_only", "deliver_alice", "deliver_bob", "discard_pending_alice",
                             "discard_pending_bob", "lose_at_bob", "resync", "resync_alice_only"])
    return draw(st.lists(steps, min_size=1, max_size=14))


@settings(max_examples=30, deadline=None)
@given(histories())
def test_resync_from_agreed_points_ends_as_resync_of_every_key_would(tmp_path_factory, history):
    root = tmp_path_factory.mktemp("twins")
    pairs = {mode: tuple(KeyStore(str(root / f"{mode}-{end}.db"), bytes(32)) for end in "ab")
             for mode in ("points", "full")}
    expiry = time.time() + 3600
    try:
        for index, step in enumerate(history, start=1):
            batch = [(str(uuid.UUID(int=index * 16 + n, version=4)), bytes(32)) for n in range(3)]
            for mode, (a, b) in pairs.items():
                _step(step, index, batch, expiry, a, b, full=mode == "full")
        for mode, (a, b) in pairs.items():
            resync(a, b, full=mode == "full")
        inventories = {mode: (a.inventory(LINK), b.inventory(LINK)) for mode, (a, b) in pairs.items()}
        assert inventories["points"] == inventories["full"]
    finally:
        for stores in pairs.values():
            for store in stores:
                store.close()


def _step(step, frame_id, batch, expiry, alice, bob, *, full):
    def first(store, state):
        return next((k for k, s in sorted(store.inventory(LINK).items()) if s is state), None)

    if step in ("both", "alice_committed_bob_pending", "both_pending", "alice_pending_only", "bob_pending_only"):
        if step != "bob_pending_only":
            alice.put_pending(LINK, frame_id, batch, expires_at=expiry)
        if step != "alice_pending_only":
            bob.put_pending(LINK, frame_id, batch, expires_at=expiry)
        if step in ("both", "alice_committed_bob_pending"):
            alice.commit_frame(LINK, frame_id)
        if step == "both":
            bob.commit_frame(LINK, frame_id)
    elif step.startswith("deliver_"):
        store = alice if step.endswith("alice") else bob
        if (key_id := first(store, KeyState.AVAILABLE)) is not None:
            store.deliver(LINK, key_id)
    elif step.startswith("discard_pending_"):
        store = alice if step.endswith("alice") else bob
        pending = {k for k, s in store.inventory(LINK).items() if s is KeyState.PENDING}
        frames = {f for f in range(frame_id) if store.inventory(LINK, [f]).keys() & pending}
        if frames:
            store.discard_frame(LINK, min(frames))
    elif step == "lose_at_bob":
        if (key_id := first(bob, KeyState.AVAILABLE)) is not None:
            bob.apply_resync(LINK, [], [key_id], [])
    elif step == "resync":
        resync(alice, bob, full=full)
    elif step == "resync_alice_only":
        resync(alice, bob, apply_at=alice, full=full)

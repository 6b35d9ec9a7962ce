"""Key store on a real SQLite file: states, at-rest encryption, expiry, and crash safety under kill -9."""
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qkdd.keystore import (
    KeyAlreadyDelivered,
    KeyNotFound,
    KeyState,
    KeyStore,
    KeyStoreError,
    KeyUnavailable,
    create_kek,
    kek_for_state_dir,
    kek_from_credentials,
    load_kek,
)
from qkdd.keystore import store as store_module
from qkdd.keystore.model import IllegalTransition
from qkdd.link.service import open_keystore

LINK = "link-ab"


def new_keys(n, nbytes=32):
    return [(str(uuid.uuid4()), os.urandom(nbytes)) for _ in range(n)]


@pytest.fixture
def kek(tmp_path):
    return create_kek(str(tmp_path / "kek"))


@pytest.fixture
def store(tmp_path, kek):
    s = KeyStore(str(tmp_path / "keys.db"), kek)
    yield s
    s.close()


def test_frame_lifecycle_and_single_delivery(store):
    keys = new_keys(4)
    store.put_pending(LINK, 1, keys, expires_at=time.time() + 3600)
    assert store.counts(LINK)[KeyState.PENDING] == 4
    with pytest.raises(KeyUnavailable):
        store.deliver(LINK, keys[0][0])          # not usable before the other end confirms
    assert store.commit_frame(LINK, 1) == 4
    assert store.commit_frame(LINK, 1) == 0      # idempotent
    assert store.available_bits(LINK) == 4 * 256

    reserved = store.reserve_available(LINK, 2, holder="sae-a>sae-b")
    assert reserved == [keys[0][0], keys[1][0]]     # oldest first, in the frame's order
    delivered = store.deliver(LINK, reserved[0], holder="sae-a>sae-b")
    assert delivered.material == dict(keys)[reserved[0]]
    assert "redacted" in repr(delivered) and delivered.material.hex() not in repr(delivered)
    with pytest.raises(KeyAlreadyDelivered):
        store.deliver(LINK, reserved[0])
    with pytest.raises(KeyUnavailable):
        store.deliver(LINK, reserved[1], holder="someone-else")
    store.release(LINK, [reserved[1]])
    assert store.state(LINK, reserved[1]) is KeyState.AVAILABLE
    with pytest.raises(KeyUnavailable):
        store.reserve_available(LINK, 4, holder="x")   # all or nothing: 3 left
    assert store.counts(LINK)[KeyState.AVAILABLE] == 3


def test_reserve_by_id_and_allocatable_partition(store):
    keys = new_keys(4)
    store.put_pending(LINK, 7, keys, expires_at=time.time() + 3600, allocatable=[True, False, True, False])
    store.commit_frame(LINK, 7)
    assert store.available_bits(LINK) == 2 * 256
    got = store.reserve_available(LINK, 2, holder="h")
    assert set(got) == {keys[0][0], keys[2][0]}
    with pytest.raises(KeyUnavailable):
        store.reserve_available(LINK, 1, holder="h")
    assert store.reserve_ids(LINK, [keys[1][0]], holder="peer-request-1") == {keys[1][0]: 256}
    assert store.reserve_ids(LINK, [keys[1][0]], holder="peer-request-1") == {keys[1][0]: 256}   # idempotent
    assert store.deliver(LINK, keys[1][0], holder="peer-request-1").material == keys[1][1]
    with pytest.raises(KeyAlreadyDelivered):
        store.reserve_ids(LINK, [keys[1][0]], holder="peer-request-1")



def test_ids_in_another_form_reserve_and_release_their_keys(store):
    """A key id in upper or mixed case names the same key (canonical_key_id) for reserve_ids and release alike:
    release once looked the key up by its canonical id but changed the row of the id as given, so it passed its
    checks, changed nothing and the key stayed reserved."""
    keys = new_keys(2)
    store.put_pending(LINK, 7, keys, expires_at=time.time() + 3600, allocatable=[False, False])
    store.commit_frame(LINK, 7)
    upper, mixed = keys[0][0].upper(), keys[1][0][:9].upper() + keys[1][0][9:]
    assert store.reserve_ids(LINK, [upper, mixed], holder="h") == {keys[0][0]: 256, keys[1][0]: 256}
    store.release(LINK, [upper, mixed])
    assert [store.state(LINK, key_id) for key_id, _ in keys] == [KeyState.AVAILABLE] * 2
    assert [store.holder_of(LINK, key_id) for key_id, _ in keys] == [None, None]
    with pytest.raises(IllegalTransition):
        store.release(LINK, [upper])                                # available now: nothing to cancel

def test_bad_ids_and_unknown_keys(store):
    with pytest.raises(KeyStoreError, match="not a UUID"):
        store.put_pending(LINK, 1, [("not-a-uuid", b"k")], expires_at=time.time() + 10)
    with pytest.raises(KeyStoreError, match="canonical"):
        store.deliver(LINK, "{" + str(uuid.uuid4()) + "}")
    with pytest.raises(KeyNotFound):
        store.deliver(LINK, str(uuid.uuid4()))
    keys = new_keys(1)
    store.put_pending(LINK, 1, keys, expires_at=time.time() + 10)
    with pytest.raises(KeyNotFound):
        store.deliver("other-link", keys[0][0])
    with pytest.raises(KeyStoreError, match="already stored"):
        store.put_pending(LINK, 2, keys, expires_at=time.time() + 10)
    assert store.counts(LINK)[KeyState.PENDING] == 1       # the failed frame left nothing behind


def test_expiry_erases(tmp_path, kek):
    """On the store's own clock (injected: no waiting): usable until its expiry time, erased from then on."""
    now = [1_700_000_000.0]
    store = KeyStore(str(tmp_path / "clocked.db"), kek, clock=lambda: now[0])
    keys = new_keys(3)
    store.put_pending(LINK, 1, keys, expires_at=now[0] + 3600)
    store.commit_frame(LINK, 1)
    now[0] += 3599.5
    assert store.expire() == 0
    assert store.counts(LINK)[KeyState.AVAILABLE] == 3
    now[0] += 0.5                                       # the expiry instant itself
    with pytest.raises(KeyAlreadyDelivered, match="expired"):
        store.deliver(LINK, keys[0][0])
    assert store.expire() == 2
    assert store.counts(LINK)[KeyState.EXPIRED] == 3
    with pytest.raises(KeyUnavailable):
        store.reserve_available(LINK, 1, holder="h")
    store.close()


def test_material_is_encrypted_at_rest_and_erased(tmp_path, kek):
    path = str(tmp_path / "keys.db")
    store = KeyStore(path, kek)
    keys = new_keys(50)
    store.put_pending(LINK, 1, keys, expires_at=time.time() + 3600)
    store.commit_frame(LINK, 1)
    delivered = store.deliver(LINK, keys[0][0])
    store.close()
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    on_disk = b"".join(open(p, "rb").read() for p in (path, path + "-wal") if os.path.exists(p))
    for _, material in keys:
        assert material not in on_disk
    # The delivered row keeps no material at all (tombstone).
    row = sqlite3.connect(path).execute("SELECT state, nonce, sealed FROM keys WHERE key_id = ?",
                                        (delivered.key_id,)).fetchone()
    assert row == ("delivered", None, None)


def test_wrong_kek_and_tampered_rows_are_refused(tmp_path, kek):
    path = str(tmp_path / "keys.db")
    store = KeyStore(path, kek)
    keys = new_keys(2)
    store.put_pending(LINK, 1, keys, expires_at=time.time() + 3600)
    store.commit_frame(LINK, 1)
    store.close()
    with pytest.raises(KeyStoreError, match="does not match"):
        KeyStore(path, os.urandom(32))
    db = sqlite3.connect(path)     # move key 0's sealed material under key 1's id
    sealed, nonce = db.execute("SELECT sealed, nonce FROM keys WHERE key_id = ?", (keys[0][0],)).fetchone()
    db.execute("UPDATE keys SET sealed = ?, nonce = ? WHERE key_id = ?", (sealed, nonce, keys[1][0]))
    db.commit()
    db.close()
    store = KeyStore(path, kek)
    with pytest.raises(KeyStoreError, match="fails authentication") as info:
        store.deliver(LINK, keys[1][0])
    assert keys[0][1].hex() not in str(info.value)
    store.close()


def test_kek_files(tmp_path, monkeypatch):
    path = tmp_path / "kek"
    key = create_kek(str(path))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_kek(str(path)) == key
    with pytest.raises(KeyStoreError, match="already exists"):
        create_kek(str(path))
    path.chmod(0o644)
    with pytest.raises(KeyStoreError, match="chmod 0600"):
        load_kek(str(path))
    raw = tmp_path / "raw"
    raw.write_bytes(b"\x01" * 32)
    raw.chmod(0o600)
    assert load_kek(str(raw)) == b"\x01" * 32
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    short.chmod(0o600)
    with pytest.raises(KeyStoreError, match="expected 32 raw bytes"):
        load_kek(str(short))
    with pytest.raises(KeyStoreError, match="No such file"):
        load_kek(str(tmp_path / "missing"))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert kek_from_credentials("raw") == b"\x01" * 32
    assert kek_from_credentials("absent") is None
    unit_credentials = tmp_path / "credentials"      # as systemd names files of LoadCredential=qkdd:DIR
    unit_credentials.mkdir()
    (unit_credentials / "qkdd_kek").write_bytes(b"\x02" * 32)
    (unit_credentials / "qkdd_kek").chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(unit_credentials))
    assert kek_from_credentials("kek") == b"\x02" * 32


def _credentials(tmp_path, monkeypatch, **files: bytes):
    """A $CREDENTIALS_DIRECTORY as systemd lays it out (files 0400), holding `files`."""
    directory = tmp_path / "credentials"
    directory.mkdir()
    for name, content in files.items():
        (directory / name).write_bytes(content)
        (directory / name).chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    return directory


def test_kek_source_any_falls_back_to_a_file_beside_the_store(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    state = tmp_path / "state"
    state.mkdir()
    first = kek_for_state_dir(str(state), environ={})
    assert (state / "kek").stat().st_mode & 0o777 == 0o600
    assert kek_for_state_dir(str(state), environ={"QKD_KEK_SOURCE": "any"}) == first
    # A credential wins over the file.
    _credentials(tmp_path, monkeypatch, qkdd_kek=b"\x03" * 32)
    assert kek_for_state_dir(str(state), environ={}) == b"\x03" * 32


def test_kek_source_credential_refuses_to_create_a_kek_beside_the_store(tmp_path, monkeypatch):
    """The packaged unit sets QKD_KEK_SOURCE=credential: without the credential the daemon does not start,
    and nothing is written to the state directory; a KEK left there is named but not used."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    state = tmp_path / "state"
    state.mkdir()
    only_credential = {"QKD_KEK_SOURCE": "credential"}
    with pytest.raises(KeyStoreError, match='no systemd credential "kek"') as info:
        kek_for_state_dir(str(state), environ=only_credential)
    assert "QKD_KEK_SOURCE=any" in str(info.value)
    assert list(state.iterdir()) == []
    legacy = create_kek(str(state / "kek"))
    with pytest.raises(KeyStoreError, match="beside the store is not used") as info:
        kek_for_state_dir(str(state), environ=only_credential)
    assert legacy.hex() not in str(info.value) and str(state / "kek") in str(info.value)
    # With the credential (sealed by the package: systemd passes it as "kek"), that one is taken.
    _credentials(tmp_path, monkeypatch, kek=(b"\x04" * 32).hex().encode() + b"\n")
    assert kek_for_state_dir(str(state), environ=only_credential) == b"\x04" * 32
    with pytest.raises(KeyStoreError, match="QKD_KEK_SOURCE='file': expected one of any, credential"):
        kek_for_state_dir(str(state), environ={"QKD_KEK_SOURCE": "file"})


def test_two_different_kek_credentials_are_refused(tmp_path, monkeypatch):
    """A sealed "kek" and a plain /etc/qkdd/credentials/kek ("qkdd_kek") that differ: neither is guessed."""
    _credentials(tmp_path, monkeypatch, kek=b"\x05" * 32, qkdd_kek=b"\x06" * 32)
    with pytest.raises(KeyStoreError, match="credentials kek and qkdd_kek differ") as info:
        kek_from_credentials("kek")
    assert (b"\x05" * 32).hex() not in str(info.value)
    (tmp_path / "credentials" / "qkdd_kek").chmod(0o600)
    (tmp_path / "credentials" / "qkdd_kek").write_bytes((b"\x05" * 32).hex().encode())
    (tmp_path / "credentials" / "qkdd_kek").chmod(0o400)
    assert kek_from_credentials("kek") == b"\x05" * 32   # the same key in both forms is fine


def test_open_keystore_under_the_packaged_unit_needs_the_credential(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("QKD_KEK_SOURCE", "credential")
    state = tmp_path / "state"
    state.mkdir()
    with pytest.raises(KeyStoreError, match='no systemd credential "kek"'):
        open_keystore(str(state))
    assert list(state.iterdir()) == []
    kek = os.urandom(32)
    _credentials(tmp_path, monkeypatch, kek=kek)
    open_keystore(str(state)).close()
    assert sorted(p.name for p in state.iterdir() if not p.name.endswith(("-wal", "-shm"))) == ["keys.sqlite3"]
    KeyStore(str(state / "keys.sqlite3"), kek).close()   # the store is under the credential's KEK...
    with pytest.raises(KeyStoreError, match="key-encryption key does not match"):   # ...and no other
        KeyStore(str(state / "keys.sqlite3"), os.urandom(32))


_WRITER = textwrap.dedent("""
    import os, sys, time, uuid
    from qkdd.keystore import KeyStore, KeyAlreadyDelivered
    store = KeyStore(sys.argv[1], bytes.fromhex(sys.argv[2]))
    frame = 0
    while True:
        frame += 1
        keys = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(8)]
        store.put_pending("L", frame, keys, expires_at=time.time() + 3600)
        store.commit_frame("L", frame)
        for key_id in store.reserve_available("L", 2, holder="h"):
            store.deliver("L", key_id)
            print(key_id, flush=True)
""")


@pytest.mark.parametrize("delay_s", [0.05, 0.2, 0.45])
def test_kill_9_leaves_whole_frames_and_durable_deliveries(tmp_path, kek, delay_s):
    path = str(tmp_path / "keys.db")
    KeyStore(path, kek).close()
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, path, kek.hex()], stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline().split()      # the writer is running; now kill it mid-stream
    time.sleep(delay_s)
    proc.send_signal(signal.SIGKILL)
    printed = first + proc.stdout.read().split()
    proc.wait()
    assert len(printed) > 1

    store = KeyStore(path, kek)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    for frame_id, n in db.execute("SELECT frame_id, COUNT(*) FROM keys GROUP BY frame_id"):
        assert n == 8, f"frame {frame_id} half stored"
    for key_id in printed:                 # every delivery the writer reported is durable
        assert store.state("L", key_id) is KeyState.DELIVERED
        with pytest.raises(KeyAlreadyDelivered):
            store.deliver("L", key_id)
    store.close()


def test_reserved_for_lists_one_holders_reservations(tmp_path):
    store = KeyStore(str(tmp_path / "k.sqlite"), bytes(32))
    ids = [str(uuid.uuid4()) for _ in range(3)]
    store.put_pending("l1", 1, [(key_id, b"\x01" * 32) for key_id in ids], expires_at=time.time() + 60)
    store.commit_frame("l1", 1)
    mine = store.reserve_available("l1", 2, "wireguard:t1")
    store.reserve_ids("l1", [ids[2]], "sae:other")
    assert store.reserved_for("l1", "wireguard:t1") == mine
    assert store.reserved_for("l1", "sae:other") == [ids[2]]
    store.deliver("l1", mine[0], holder="wireguard:t1")
    assert store.reserved_for("l1", "wireguard:t1") == [mine[1]]


def test_kek_path_that_is_a_fifo_symlink_or_large_file_is_refused_at_once(tmp_path):
    fifo = tmp_path / "kek.fifo"
    os.mkfifo(fifo, 0o600)                      # nobody writes to it: a blocking open would hang
    with pytest.raises(KeyStoreError, match="is not a regular file"):
        load_kek(str(fifo))
    real = tmp_path / "kek"
    create_kek(str(real))
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(KeyStoreError, match="key-encryption key"):
        load_kek(str(tmp_path / "link"))
    large = tmp_path / "large"
    large.write_bytes(b"0" * 4096)
    large.chmod(0o600)
    with pytest.raises(KeyStoreError, match="more than the 256"):
        load_kek(str(large))


def test_take_bits_delivers_the_oldest_allocatable_keys_once_in_one_step(store):
    keys = new_keys(6)
    store.put_pending(LINK, 0, keys, expires_at=time.time() + 3600, allocatable=[True, False, True, True, True, True])
    store.commit_frame(LINK, 0)
    taken = store.take_bits(LINK, 256, want_bits=3 * 256)          # a block of 3, skipping the other end's key
    assert [(key.key_id, key.material) for key in taken] == [keys[0], keys[2], keys[3]]
    assert [store.state(LINK, key_id) for key_id, _ in keys] == [
        KeyState.DELIVERED, KeyState.AVAILABLE, KeyState.DELIVERED, KeyState.DELIVERED, KeyState.AVAILABLE,
        KeyState.AVAILABLE]
    with pytest.raises(KeyAlreadyDelivered):
        store.deliver(LINK, keys[0][0])                                 # erased: never handed out twice
    with pytest.raises(KeyUnavailable):
        store.take_bits(LINK, 3 * 256)                                  # 2 allocatable left: nothing taken
    assert store.state(LINK, keys[4][0]) is KeyState.AVAILABLE
    assert [key.key_id for key in store.take_bits(LINK, 256, want_bits=10 * 256)] == [keys[4][0], keys[5][0]]


def test_a_take_larger_than_one_erasing_statement_erases_every_key_inside_a_group_commit(store):
    """take_bits erases its keys _KEYS_PER_STATEMENT to a statement (one statement a key grew as the square of the
    keys inside a group commit): a take of 2.5 statements' worth inside batch() delivers each key once, erases
    each one's material, and leaves the counts and the held bits exact."""
    count = 2 * store_module._KEYS_PER_STATEMENT + store_module._KEYS_PER_STATEMENT // 2
    keys = new_keys(count + 3, nbytes=4)
    store.put_pending(LINK, 0, keys, expires_at=time.time() + 3600)
    store.commit_frame(LINK, 0)
    with store.batch():
        taken = store.take_bits(LINK, count * 32, want_bits=count * 32)
    assert [(key.key_id, key.material) for key in taken] == keys[:count]
    assert {store.state(LINK, key_id) for key_id, _ in keys[:count]} == {KeyState.DELIVERED}
    assert [store.state(LINK, key_id) for key_id, _ in keys[count:]] == [KeyState.AVAILABLE] * 3
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM keys WHERE sealed IS NOT NULL OR nonce IS NOT NULL").fetchone() == (3,)
    assert store.counts(LINK)[KeyState.DELIVERED] == count and store.counts(LINK)[KeyState.AVAILABLE] == 3
    assert store.available_bits(LINK) == 3 * 32


class _Records:
    """An audit trail's stand-in: the records the store writes, as (event, keys, holder)."""

    def __init__(self):
        self.records = []

    def event(self, event, link_id, keys, *, holder=None, detail=""):
        self.records.append((event, list(keys), holder))


def _peer_keys_over_statements(store):
    """2.5 statements' worth (_KEYS_PER_STATEMENT) of AVAILABLE keys of the other end's share, of 4 to 7 bytes so
    that their bits differ: {key_id: bits} in the stored order."""
    count = 2 * store_module._KEYS_PER_STATEMENT + store_module._KEYS_PER_STATEMENT // 2
    keys = [(str(uuid.uuid4()), os.urandom(4 + i % 4)) for i in range(count)]
    store.put_pending(LINK, 0, keys, expires_at=time.time() + 3600, allocatable=[False] * count)
    store.commit_frame(LINK, 0)
    return {key_id: len(material) * 8 for key_id, material in keys}


def _rows(store):
    """Every key's state and holder, and the state counts, as the file holds them."""
    with sqlite3.connect(store.path) as db:
        return (db.execute("SELECT key_id, state, holder FROM keys ORDER BY key_id").fetchall(),
                db.execute("SELECT * FROM state_counts ORDER BY link_id, state, allocatable").fetchall())


@pytest.mark.parametrize("peer_share_only", [False, True])
def test_a_reservation_and_release_of_several_statements_inside_a_group_commit(store, peer_share_only):
    """reserve_ids and release change their keys _KEYS_PER_STATEMENT to a statement (one statement a key grew as the
    square of the keys inside a group commit): 2.5 statements' worth in a shuffled order inside batch() reserves
    and releases each key once, returns each one's bits by id, and audits them in the order given."""
    bits = _peer_keys_over_statements(store)
    order = list(bits)
    random.Random(7).shuffle(order)
    store.audit = audit = _Records()
    with store.batch():
        got = store.reserve_ids(LINK, order, "h", peer_share_only=peer_share_only)
    assert list(got.items()) == [(key_id, bits[key_id]) for key_id in order]
    assert {store.holder_of(LINK, key_id) for key_id in order} == {"h"}
    assert store.counts(LINK)[KeyState.RESERVED] == len(order) and store.counts(LINK)[KeyState.AVAILABLE] == 0
    with store.batch():
        store.release(LINK, order)
    assert {(store.state(LINK, key_id), store.holder_of(LINK, key_id)) for key_id in order} == {
        (KeyState.AVAILABLE, None)}
    assert store.counts(LINK)[KeyState.AVAILABLE] == len(order) and store.counts(LINK)[KeyState.RESERVED] == 0
    assert store.available_bits(LINK, allocatable_only=False) == sum(bits.values())
    assert audit.records == [("reserved", list(got.items()), "h"), ("released", list(got.items()), None)]


@pytest.mark.parametrize("bad", ["delivered", "reserved for another", "pending", "unknown", "not a UUID",
                                 "this end's share"])
def test_a_reservation_of_several_statements_that_fails_in_the_middle_changes_nothing(store, bad):
    """One key in the second statement's worth that cannot be reserved refuses the whole call inside batch() with
    the error one key at a time gives, keys of the statements before and after it unchanged and nothing audited."""
    order = list(_peer_keys_over_statements(store))
    position = store_module._KEYS_PER_STATEMENT + store_module._KEYS_PER_STATEMENT // 2
    middle = order[position]
    if bad == "delivered":
        store.deliver(LINK, middle)
        error, message = KeyAlreadyDelivered, f"key {middle} was delivered before"
    elif bad == "reserved for another":
        store.reserve_ids(LINK, [middle], "other")
        error, message = IllegalTransition, f"key {middle}: cannot go from reserved to reserved"
    elif bad == "pending":
        order[position] = middle = new_keys(1)[0][0]
        store.put_pending(LINK, 1, [(middle, b"k")], expires_at=time.time() + 3600, allocatable=[False])
        error, message = IllegalTransition, f"key {middle}: cannot go from pending to reserved"
    elif bad == "unknown":
        order[position] = middle = str(uuid.uuid4())
        error, message = KeyNotFound, f"key {middle} is not stored for link {LINK}"
    elif bad == "not a UUID":
        order[position] = "not-a-uuid"
        error, message = KeyStoreError, "not a UUID"
    else:
        order[position] = middle = new_keys(1)[0][0]
        store.put_pending(LINK, 2, [(middle, b"k")], expires_at=time.time() + 3600, allocatable=[True])
        store.commit_frame(LINK, 2)
        error, message = KeyUnavailable, f"key {middle} is this end's to hand out"
    before = _rows(store)
    store.audit = audit = _Records()
    with store.batch():
        with pytest.raises(error, match=message):
            store.reserve_ids(LINK, order, "h", peer_share_only=True)
    assert _rows(store) == before and audit.records == []


def test_the_first_key_named_that_fails_is_the_one_a_reservation_reports(store):
    """Keys are checked in the order given, statement after statement, so the error is the first bad key's, as one
    key at a time: an unknown key before a delivered one, a delivered one before an id that is not a UUID."""
    order = list(_peer_keys_over_statements(store))
    store.deliver(LINK, order[1100])
    unknown = str(uuid.uuid4())
    with pytest.raises(KeyNotFound, match=unknown):
        store.reserve_ids(LINK, order[:700] + [unknown] + order[700:], "h")
    with pytest.raises(KeyAlreadyDelivered, match=order[1100]):
        store.reserve_ids(LINK, order[:1150] + ["not-a-uuid"] + order[1150:], "h")
    with pytest.raises(KeyStoreError, match="not a UUID"):
        store.reserve_ids(LINK, order[:1050] + ["not-a-uuid"] + order[1050:], "h")
    assert store.counts(LINK)[KeyState.RESERVED] == 0


def test_a_reservation_of_several_statements_with_repeated_ids_and_keys_already_held(store):
    """Keys already reserved for the same holder (every third) and ids named twice, within one statement's worth
    and across them, are reserved, returned and audited once each, in the order first named."""
    bits = _peer_keys_over_statements(store)
    order = list(bits)
    store.reserve_ids(LINK, order[::3], "h")
    store.audit = audit = _Records()
    with store.batch():
        got = store.reserve_ids(LINK, order[:10] + order + order[600:620] + order[1000:1005], "h")
    assert list(got.items()) == [(key_id, bits[key_id]) for key_id in order]
    assert audit.records == [("reserved", list(got.items()), "h")]
    assert {store.holder_of(LINK, key_id) for key_id in order} == {"h"}
    assert store.counts(LINK)[KeyState.RESERVED] == len(order)


@pytest.mark.parametrize("bad", ["named twice in one statement", "named twice across statements", "available",
                                 "delivered", "unknown"])
def test_a_release_of_several_statements_that_fails_in_the_middle_changes_nothing(store, bad):
    """A release naming a key twice (the second time it is available already), or naming an available, delivered or
    unknown key among 2.5 statements' worth of reserved ones, is refused whole inside batch() with the error one key
    at a time gives: every key still reserved, nothing audited."""
    order = list(_peer_keys_over_statements(store))
    store.reserve_ids(LINK, order, "h")
    named = list(order)
    if bad == "named twice in one statement":
        named.insert(700, order[600])
        error, message = IllegalTransition, f"key {order[600]}: cannot go from available to available"
    elif bad == "named twice across statements":
        named.append(order[600])
        error, message = IllegalTransition, f"key {order[600]}: cannot go from available to available"
    elif bad == "available":
        store.release(LINK, [order[700]])
        error, message = IllegalTransition, f"key {order[700]}: cannot go from available to available"
    elif bad == "delivered":
        store.deliver(LINK, order[700])
        error, message = KeyAlreadyDelivered, f"key {order[700]} was delivered before"
    else:
        named[700] = unknown = str(uuid.uuid4())
        error, message = KeyNotFound, f"key {unknown} is not stored"
    before = _rows(store)
    store.audit = audit = _Records()
    with store.batch():
        with pytest.raises(error, match=message):
            store.release(LINK, named)
    assert _rows(store) == before and audit.records == []


def test_keys_come_out_with_the_frame_they_were_stored_from(store):
    """deliver, peek and take_bits read the key's frame in the same statement as the key itself."""
    frames = {7: new_keys(2), 2 ** 40 + 3: new_keys(2)}
    for frame_id, keys in frames.items():
        store.put_pending(LINK, frame_id, keys, expires_at=time.time() + 3600)
        store.commit_frame(LINK, frame_id)
    (first, _), (second, _) = frames[7]
    (third, _), (fourth, _) = frames[2 ** 40 + 3]
    assert store.peek(LINK, third).frame_id == 2 ** 40 + 3
    assert store.deliver(LINK, second).frame_id == 7
    assert [(key.key_id, key.frame_id) for key in store.take_bits(LINK, 256, want_bits=2 * 256)] == [
        (first, 7), (third, 2 ** 40 + 3)]
    assert f"frame_id={2 ** 40 + 3}" in repr(store.deliver(LINK, fourth))


@pytest.mark.parametrize("rows_per_insert", [(7, 4), (2000, 200, 20)])
def test_a_frame_is_stored_as_key_by_key_sealing_would_store_it(tmp_path, kek, monkeypatch, rows_per_insert):
    """put_pending's rows, in statements of several rows and one by one: in the keys' order, each key under its own
    nonce, sealed with its id, link and length as associated data, ids as canonical_key_id makes them (upper-case
    ids in a frame lowered), the frame's columns on every row; a frame with a bad id, empty material or a key id
    stored before (in a statement of several rows or in the rest) refused whole."""
    monkeypatch.setattr(store_module, "_ROWS_PER_INSERT", rows_per_insert)
    path = str(tmp_path / "keys.db")
    store = KeyStore(path, kek, clock=lambda: 1000.0)
    keys = new_keys(40) + [(str(uuid.uuid4()).upper(), os.urandom(16))]
    store.put_pending(LINK, 7, keys, expires_at=5000, allocatable=[i % 3 == 0 for i in range(41)], qber=0.03)
    rows = store._db.execute("SELECT key_id, link_id, frame_id, bits, state, allocatable, created_at, expires_at, "
                             "nonce, sealed, qber FROM keys ORDER BY rowid").fetchall()
    aead = AESGCM(kek)
    assert [row[0] for row in rows] == [key_id.lower() for key_id, _ in keys]
    assert len({row[8] for row in rows}) == 41 and all(len(row[8]) == 12 for row in rows)
    for i, ((key_id, material), row) in enumerate(zip(keys, rows)):
        assert row[1:8] == (LINK, 7, len(material) * 8, "pending", int(i % 3 == 0), 1000.0, 5000.0)
        assert row[10] == 0.03
        ad = f"qkdd-key-v1|{key_id.lower()}|{LINK}|{len(material) * 8}".encode()
        assert aead.decrypt(row[8], row[9], ad) == material
    for bad in ([("not-a-uuid", b"k")], [(keys[0][0][:35], b"k")], [(str(uuid.uuid4()), b"")], [keys[5]]):
        with pytest.raises(KeyStoreError):
            store.put_pending(LINK, 8, new_keys(3) + bad + new_keys(20), expires_at=5000)
        with pytest.raises(KeyStoreError):
            store.put_pending(LINK, 8, new_keys(20) + bad + new_keys(3), expires_at=5000)
        with pytest.raises(KeyStoreError):
            store.put_pending(LINK, 8, new_keys(23) + bad, expires_at=5000)
    assert store.counts(LINK)[KeyState.PENDING] == 41
    store.close()

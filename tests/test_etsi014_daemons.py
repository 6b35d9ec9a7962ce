"""ETSI GS QKD 014 against two real qkdd daemons (KME A serves sae-a and sae-e, KME B serves sae-b and
sae-d) over real mTLS. A third-party client (`etsi-qkd-014-client` from PyPI) and raw httpx requests
drive them.

Most tests (`kmes`) run on a live simulated link: KME A is Alice and KME B is Bob of one link whose
engines fill the shared key store and whose peer session carries the KMEs' reservation exchange. Keys
keep arriving, so these tests wait for enough keys first and never expect a fixed count. The tests
that need a known, bounded store (not enough key; HEAD takes nothing) use `seeded`: the key stores are
seeded through the real KeyStore API into each daemon's SQLite file, with no link engine, the KMEs on a
channel of their own (see tests/etsi014_support.py).
"""
from __future__ import annotations

import base64
import concurrent.futures
import json
import signal
import sqlite3
import time
import uuid

import pytest
from etsi_qkd_014_client import QKD014Client

from qkdd.kme.service import TAKE_BLOCK_BITS
from tests.etsi014_support import LINK_ID, STORED_KEY_BITS, make_pair

STORED_KEYS = 400
POOL_KEYS = TAKE_BLOCK_BITS // STORED_KEY_BITS     # stored keys in one block taken out of the store


def running(pair, order, then=lambda: None):
    """Start both KMEs in `order`, wait for their classical channel (and `then`), yield the pair, stop both."""
    try:
        for name in order:
            pair.start(name)
        for name in ("kme-a", "kme-b"):
            pair.wait_channel(name)
        then()
        yield pair
    finally:
        pair.stop_all()


@pytest.fixture(scope="module")
def kmes(tmp_path_factory):
    pair, _ = make_pair(tmp_path_factory.mktemp("etsi014-live"), live_link=True)
    yield from running(pair, ("kme-a", "kme-b"), then=pair.wait_for_keys)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    pair, _ = make_pair(tmp_path_factory.mktemp("etsi014-seeded"), stored_keys=STORED_KEYS)
    yield from running(pair, ("kme-b", "kme-a"))


def stored_keys_in_store(kmes, name: str) -> int:
    """This end's share of available keys, in keys of STORED_KEY_BITS, read from the daemon's SQLite file."""
    db = sqlite3.connect(f"file:{kmes.state_dirs[name] / 'keys.sqlite3'}?mode=ro", uri=True, timeout=10)
    try:
        (bits,) = db.execute("SELECT COALESCE(SUM(bits), 0) FROM keys WHERE link_id = ? AND state = 'available' "
                             "AND allocatable = 1 AND expires_at > ?", (LINK_ID, time.time())).fetchone()
    finally:
        db.close()
    return bits // STORED_KEY_BITS


def third_party_client(kmes, kme: str, sae: str) -> QKD014Client:
    issued = kmes.pki.saes[sae]
    return QKD014Client(kmes.hostname(kme), str(issued.cert_file), str(issued.key_file), str(kmes.pki.ca_cert_file))


def enc_keys(kmes, body=None, *, sae="sae-a", slave="sae-b", kme="kme-a"):
    with kmes.client(sae) as client:
        url = kmes.url(kme, f"/api/v1/keys/{slave}/enc_keys")
        return client.post(url, json=body) if body is not None else client.get(url)


def dec_keys(kmes, key_ids, *, sae="sae-b", master="sae-a", kme="kme-b"):
    with kmes.client(sae) as client:
        return client.post(kmes.url(kme, f"/api/v1/keys/{master}/dec_keys"),
                           json={"key_IDs": [{"key_ID": key_id} for key_id in key_ids]})


def test_third_party_client_master_and_slave_get_the_same_key(kmes):
    master = third_party_client(kmes, "kme-a", "sae-a")
    slave = third_party_client(kmes, "kme-b", "sae-b")
    # Keys keep arriving from the link and nothing else takes any here: the count Get status reports lies
    # between what the key store holds just before and just after.
    low = stored_keys_in_store(kmes, "kme-a")
    code, status = master.get_status("sae-b")
    high = stored_keys_in_store(kmes, "kme-a")
    assert code == 200
    assert (status.source_kme_id, status.target_kme_id) == ("kme-a", "kme-b")
    assert (status.master_sae_id, status.slave_sae_id) == ("sae-a", "sae-b")
    assert (status.key_size, status.max_sae_id_count, status.max_key_per_request) == (256, 4, 128)
    assert 0 < low <= status.stored_key_count <= high + POOL_KEYS

    code, container = master.get_key("sae-b")
    assert code == 200, container
    [master_key] = container.keys
    assert master_key.key_id == str(uuid.UUID(master_key.key_id))          # lowercase canonical UUID
    assert len(base64.b64decode(master_key.key, validate=True)) == 32

    # KME A now also holds the rest of the block it took out of its store (qkdd.kme.taken_keys), and may
    # have fetched the next block ahead of need: the count is the store's plus that pool, which holds less
    # than two blocks (README: "one to two blocks").
    low = stored_keys_in_store(kmes, "kme-a")
    code, after = master.get_status("sae-b")
    assert low <= after.stored_key_count < stored_keys_in_store(kmes, "kme-a") + 2 * POOL_KEYS

    code, container = slave.get_key_with_key_IDs("sae-a", [master_key.key_id])
    assert code == 200, container
    [slave_key] = container.keys
    assert (slave_key.key_id, slave_key.key) == (master_key.key_id, master_key.key)

    code, error = slave.get_key_with_key_IDs("sae-a", [master_key.key_id])  # delivered once, then erased
    assert code == 400 and error.message == "one or more keys specified are not found on KME"


def test_third_party_client_post_with_number_and_size(kmes):
    kmes.wait_for_keys(minimum=80)                    # 2 x 8000 bits alone take 63 stored keys
    master = third_party_client(kmes, "kme-a", "sae-a")
    slave = third_party_client(kmes, "kme-b", "sae-b")
    for number, size in ((3, 512), (5, 64), (2, 1000 * 8)):                  # assembled, cut, spanning many
        code, container = master.get_key("sae-b", number=number, size=size)
        assert code == 200, container
        assert len(container.keys) == number
        assert all(len(base64.b64decode(key.key)) == size // 8 for key in container.keys)
        code, fetched = slave.get_key_with_key_IDs("sae-a", [key.key_id for key in container.keys])
        assert code == 200, fetched
        assert [(k.key_id, k.key) for k in fetched.keys] == [(k.key_id, k.key) for k in container.keys]


def test_key_multicast_to_an_additional_slave_once_each(kmes):
    response = enc_keys(kmes, {"number": 2, "additional_slave_SAE_IDs": ["sae-d"]})
    assert response.status_code == 200, response.text
    keys = response.json()["keys"]
    ids = [key["key_ID"] for key in keys]
    for slave in ("sae-b", "sae-d"):
        fetched = dec_keys(kmes, ids, sae=slave)
        assert fetched.status_code == 200, fetched.text
        assert fetched.json()["keys"] == keys
        again = dec_keys(kmes, ids, sae=slave)
        assert again.status_code == 400


def test_both_ends_can_be_master_and_concurrent_masters_never_share_a_key(kmes):
    kmes.wait_for_keys(minimum=30)                    # 12 requests of 2 keys at each end
    def one(args):
        sae, slave, kme = args
        response = enc_keys(kmes, {"number": 2}, sae=sae, slave=slave, kme=kme)
        assert response.status_code == 200, response.text
        return response.json()["keys"]

    jobs = [("sae-a", "sae-b", "kme-a"), ("sae-e", "sae-d", "kme-a"), ("sae-b", "sae-a", "kme-b"),
            ("sae-d", "sae-e", "kme-b")] * 6
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, jobs))
    keys = [key for batch in results for key in batch]
    assert len({key["key_ID"] for key in keys}) == len(keys)
    assert len({key["key"] for key in keys}) == len(keys)
    # a key that B's master got is fetched at A by the slave there
    sample = results[2]
    fetched = dec_keys(kmes, [key["key_ID"] for key in sample], sae="sae-a", master="sae-b", kme="kme-a")
    assert fetched.status_code == 200 and fetched.json()["keys"] == sample


def test_unknown_or_missing_certificate_and_keys_for_someone_else_are_401(kmes):
    key_id = enc_keys(kmes).json()["keys"][0]["key_ID"]
    for sae in ("sae-c", None):                                        # a third SAE; no certificate
        for response in (
                kmes.client(sae).get(kmes.url("kme-a", "/api/v1/keys/sae-b/status")),
                kmes.client(sae).post(kmes.url("kme-a", "/api/v1/keys/sae-b/enc_keys"), json={}),
                kmes.client(sae).get(kmes.url("kme-b", f"/api/v1/keys/sae-a/dec_keys?key_ID={key_id}"))):
            assert response.status_code == 401, response.text
            assert set(response.json()) == {"message", "details"}
    # sae-e is a registered SAE, but served by KME A: KME B refuses it
    assert dec_keys(kmes, [key_id], sae="sae-e").status_code == 401
    # sae-d is served by KME B, but the key was requested for sae-b only
    response = dec_keys(kmes, [key_id], sae="sae-d")
    assert response.status_code == 401
    assert dec_keys(kmes, [key_id]).status_code == 200                # still there for sae-b


BAD_ENC_KEYS = [
    ({"number": 0}, None), ({"number": -1}, None), ({"number": 1.5}, None), ({"number": "2"}, None),
    ({"number": 10 ** 30}, None), ({"number": 129}, None), ({"number": True}, None),
    ({"size": 0}, None), ({"size": -8}, None), ({"size": 12}, "size shall be a multiple of 8"),
    ({"size": 8}, None), ({"size": 10 ** 9}, None), ({"size": "256"}, None),
    ({"additional_slave_SAE_IDs": []}, None), ({"additional_slave_SAE_IDs": [" "]}, None),
    ({"additional_slave_SAE_IDs": ["sae-d", "sae-d"]}, None), ({"additional_slave_SAE_IDs": ["sae-a"]}, None),
    ({"additional_slave_SAE_IDs": ["sae-b"]}, None), ({"additional_slave_SAE_IDs": ["sae-c"]}, None),
    ({"additional_slave_SAE_IDs": ["sae-e"]}, None), ({"additional_slave_SAE_IDs": "sae-d"}, None),
    ({"additional_slave_SAE_IDs": ["s1", "s2", "s3", "s4", "s5"]}, None),
    ({"extension_mandatory": [{"abc_route_type": "direct"}]},
     "not all extension_mandatory parameters are supported"),
    ({"extension_mandatory": "abc"}, None), ({"unknown_item": 1}, None), ([1, 2], None),
]


@pytest.mark.parametrize("body, message", BAD_ENC_KEYS, ids=[str(case[0])[:40] for case in BAD_ENC_KEYS])
def test_bad_key_requests_are_400_with_an_error_body(kmes, body, message):
    response = enc_keys(kmes, body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert set(error) == {"message", "details"} and error["details"]
    if message:
        assert error["message"] == message


@pytest.mark.parametrize("path", [
    "/api/v1/keys//status", "/api/v1/keys//enc_keys", "/api/v1/keys//dec_keys?key_ID=" + str(uuid.uuid4()),
    "/api/v1/keys/sae%20b/status", "/api/v1/keys/%3Csae%3E/enc_keys",
    "/api/v1/keys/sae-a/status", "/api/v1/keys/sae-a/enc_keys",               # naming itself as the peer
    "/api/v1/keys/sae-a/dec_keys?key_ID=" + str(uuid.uuid4()),
    "/api/v1/keys/sae-b/dec_keys", "/api/v1/keys/sae-b/dec_keys?key_ID=x",   # no or a malformed key_ID
    "/api/v1/keys/sae-b/dec_keys?key_ID=" + str(uuid.uuid4()) + "&key_ID=" + str(uuid.uuid4()),
    "/api/v1/keys/sae-c/status",                                                # unknown SAE
    "/api/v1/keys/sae-b/enc_keys?number=x", "/api/v1/keys/sae-b/enc_keys?size=12",
    "/api/v1/keys/sae-b/enc_keys?colour=red",
    # whitespace that str.strip() drops and int() refuses (found by fuzzing: tests/fuzz/fuzz_etsi014.py)
    "/api/v1/keys/sae-b/enc_keys?number=1%1E", "/api/v1/keys/sae-b/enc_keys?size=256%1C",
])
def test_bad_paths_and_queries_are_400(kmes, path):
    with kmes.client("sae-a") as client:
        response = client.get(kmes.url("kme-a", path))
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"message", "details"}


@pytest.mark.parametrize("body", [
    {"key_IDs": []}, {"key_IDs": [{"key_ID": "not-a-uuid"}]}, {"key_IDs": [{"key_ID": 7}]},
    {"key_IDs": [{}]}, {"key_IDs": "x"}, {}, {"key_IDs": [{"key_ID": "{" + str(uuid.uuid4()) + "}"}]},
    {"key_IDs": [{"key_ID": str(uuid.uuid4())}] * 2},
])
def test_bad_key_ids_are_400(kmes, body):
    with kmes.client("sae-b") as client:
        response = client.post(kmes.url("kme-b", "/api/v1/keys/sae-a/dec_keys"), json=body)
    assert response.status_code == 400, response.text


def test_unknown_key_id_has_the_spec_message(kmes):
    response = dec_keys(kmes, [str(uuid.uuid4())])
    assert response.status_code == 400
    assert response.json()["message"] == "one or more keys specified are not found on KME"
    with kmes.client("sae-b") as client:   # the master named in the path must be the key's master
        key_id = enc_keys(kmes).json()["keys"][0]["key_ID"]
        wrong_master = client.get(kmes.url("kme-b", f"/api/v1/keys/sae-e/dec_keys?key_ID={key_id}"))
        assert wrong_master.status_code == 400
        upper = client.get(kmes.url("kme-b", f"/api/v1/keys/sae-a/dec_keys?key_ID={key_id.upper()}"))
        assert upper.status_code == 200 and upper.json()["keys"][0]["key_ID"] == key_id


def test_empty_post_means_defaults_and_optional_extensions_are_ignored(kmes):
    with kmes.client("sae-a") as client:
        response = client.post(kmes.url("kme-a", "/api/v1/keys/sae-b/enc_keys"), content=b"")
    assert response.status_code == 200, response.text
    assert len(response.json()["keys"]) == 1
    assert len(base64.b64decode(response.json()["keys"][0]["key"])) == 32
    response = enc_keys(kmes, {"extension_optional": [{"abc_max_age": 30000}], "extension_mandatory": []})
    assert response.status_code == 200, response.text


def test_json_bodies_are_read_whatever_content_type_they_declare(kmes):
    """§5.1 fixes the format as JSON. libcurl sends CURLOPT_POSTFIELDS as application/x-www-form-urlencoded
    unless told otherwise, and C clients built on it (the QURSA ETSI 014 wrapper under strongSwan's qkd
    plugin and the QKD-KEM OpenSSL provider) POST their Key IDs that way."""
    with kmes.client("sae-a") as client:
        response = client.post(kmes.url("kme-a", "/api/v1/keys/sae-b/enc_keys"), content=b'{"number": 2}',
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text
    keys = response.json()["keys"]
    assert len(keys) == 2
    body = json.dumps({"key_IDs": [{"key_ID": key["key_ID"]} for key in keys]}).encode()
    with kmes.client("sae-b") as client:
        response = client.post(kmes.url("kme-b", "/api/v1/keys/sae-a/dec_keys"), content=body,
                               headers={"Content-Type": "text/plain"})
    assert response.status_code == 200, response.text
    assert response.json()["keys"] == keys


def test_get_with_a_body_is_400_not_a_default_request(kmes):
    """§6.2 and §6.4: GET carries no body. Answering the query alone would hand out keys the body did not
    ask for (here one key of 256 bits instead of three of 512)."""
    with kmes.client("sae-a") as client:
        response = client.request("GET", kmes.url("kme-a", "/api/v1/keys/sae-b/enc_keys"),
                                  json={"number": 3, "size": 512})
    assert response.status_code == 400, response.text
    assert response.json()["details"] == [{"body": "a GET request carries no body; use POST"}]
    key_id = enc_keys(kmes).json()["keys"][0]["key_ID"]
    with kmes.client("sae-b") as client:
        url = kmes.url("kme-b", f"/api/v1/keys/sae-a/dec_keys?key_ID={key_id}")
        response = client.request("GET", url, json={"key_IDs": [{"key_ID": str(uuid.uuid4())}]})
        assert response.status_code == 400, response.text
        assert client.get(url).status_code == 200                    # the key was not handed out


@pytest.mark.parametrize("path, sae, kme, body", [
    ("/api/v1/keys/sae-b/enc_keys", "sae-a", "kme-a", b'{"number": 1, "number": 2}'),
    ("/api/v1/keys/sae-b/enc_keys", "sae-a", "kme-a", b'{"extension_optional": [{"abc_x": 1, "abc_x": 2}]}'),
    ("/api/v1/keys/sae-a/dec_keys", "sae-b", "kme-b",
     b'{"key_IDs": [{"key_ID": "%s", "key_ID": "%s"}]}' % (str(uuid.uuid4()).encode(), str(uuid.uuid4()).encode())),
])
def test_a_name_twice_in_one_json_object_is_400(kmes, path, sae, kme, body):
    """RFC 8259 §4 leaves the meaning of a repeated name to each parser (first wins, last wins, error): a
    request that two parsers on its way could read differently is refused, not read as Python's last wins."""
    with kmes.client(sae) as client:
        response = client.post(kmes.url(kme, path), content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["message"] == "bad request format"


@pytest.mark.parametrize("method, path, body, status", [
    ("GET", "/api/v1/keys/sae-b/status/", None, 404), ("GET", "/api/v1/keys/sae-b/keys", None, 404),
    ("GET", "/api/v1/keys/", None, 404), ("PUT", "/api/v1/keys/sae-b/status", None, 405),
    ("DELETE", "/api/v1/keys/sae-b/enc_keys", None, 405), ("HEAD", "/api/v1/keys/sae-b/enc_keys", None, 405),
    ("GET", "/api/v1/keys/sae%2Fb/status", None, 400), ("GET", "/api/v1/keys/sae-b/enc_keys?number=%FF", None, 400),
    ("POST", "/api/v1/keys/sae-b/enc_keys", b" " * (1024 * 1024 + 1), 413),
])
def test_every_error_under_the_prefix_has_the_error_data_format(kmes, method, path, body, status):
    """§6.5: message a string, details (optional) an array of objects (name/value pairs), also for the
    errors the HTTP server answers before any ETSI 014 handler runs."""
    with kmes.client("sae-a") as client:
        response = client.request(method, kmes.url("kme-a", path), content=body)
    assert response.status_code == status, response.text
    if status == 405:       # RFC 9110 §10.2.1: the methods the resource supports, HEAD only where it is served
        assert response.headers["allow"] == ("GET, HEAD" if path.endswith("/status") else "GET, POST")
    if method == "HEAD":
        return
    assert response.headers["content-type"] == "application/json"
    error = response.json()
    assert set(error) <= {"message", "details"} and isinstance(error["message"], str)
    assert all(isinstance(detail, dict) for detail in error.get("details", [])), error


def test_not_enough_key_is_503(seeded):
    """Seeded: a live link could hold the 1 Mbit asked for by the time the request arrives."""
    response = enc_keys(seeded, {"number": 128, "size": 8192})
    assert response.status_code == 503, response.text
    assert set(response.json()) == {"message", "details"}
    assert response.json()["message"] == "keys are not available" and response.headers["retry-after"] == "1"
    assert enc_keys(seeded).status_code == 200               # nothing was consumed by the refused request


def test_slave_kme_killed_between_enc_keys_and_dec_keys_still_delivers_exactly_once(kmes):
    keys = enc_keys(kmes, {"number": 3}).json()["keys"]
    sessions_at_a = kmes.sessions_ready("kme-a")
    kmes.daemons["kme-b"].stop(signal.SIGKILL)
    response = enc_keys(kmes)
    assert response.status_code == 503                       # the slave's KME is gone: no key handed out
    kmes.start("kme-b")
    kmes.wait_channel("kme-b")
    fetched = dec_keys(kmes, [key["key_ID"] for key in keys])
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["keys"] == keys
    assert dec_keys(kmes, [keys[0]["key_ID"]]).status_code == 400
    # the link's next session carries the reservation exchange again
    deadline = time.monotonic() + 30
    while kmes.sessions_ready("kme-a") <= sessions_at_a:
        assert time.monotonic() < deadline, "the link's session did not come back at KME A"
        time.sleep(0.1)
    kmes.wait_for_keys()
    key = enc_keys(kmes).json()["keys"][0]
    assert dec_keys(kmes, [key["key_ID"]]).json()["keys"] == [key]


def test_head_never_hands_out_keys_and_each_get_key_counts(seeded):
    """Seeded: on a live link the count moves on its own."""
    status = seeded.url("kme-a", "/api/v1/keys/sae-b/status")
    with seeded.client("sae-a") as client:
        before = client.get(status).json()["stored_key_count"]
        assert 0 < before <= STORED_KEYS // 2
        assert client.head(seeded.url("kme-a", "/api/v1/keys/sae-b/enc_keys")).status_code == 405
        assert client.get(status).json()["stored_key_count"] == before
        assert client.get(seeded.url("kme-a", "/api/v1/keys/sae-b/enc_keys")).status_code == 200
        assert client.get(status).json()["stored_key_count"] == before - 1


def test_no_key_material_reaches_the_logs_or_the_metrics(kmes):
    """Keys handed out by both KMEs as master, a multicast, and refused second fetches: neither daemon's log
    nor /metrics holds any of them, in base64 or hex (key_IDs may appear; they grant nothing)."""
    import httpx

    handed = []
    for master, slave, kme_m, kme_s, body in (("sae-a", "sae-b", "kme-a", "kme-b", {"number": 3, "size": 512}),
                                              ("sae-b", "sae-a", "kme-b", "kme-a", None),
                                              ("sae-a", "sae-b", "kme-a", "kme-b",
                                               {"number": 1, "additional_slave_SAE_IDs": ["sae-d"]})):
        got = enc_keys(kmes, body, sae=master, slave=slave, kme=kme_m)
        assert got.status_code == 200, got.text
        keys = got.json()["keys"]
        ids = [key["key_ID"] for key in keys]
        fetched = dec_keys(kmes, ids, sae=slave, master=master, kme=kme_s)
        assert fetched.json()["keys"] == keys
        assert dec_keys(kmes, ids, sae=slave, master=master, kme=kme_s).status_code == 400     # once only
        handed += [base64.b64decode(key["key"]) for key in keys]
    texts = {name: daemon.log + httpx.get(daemon.health_url + "/metrics").text
             for name, daemon in kmes.daemons.items()}
    for material in handed:
        for form in (base64.b64encode(material).decode(), material.hex(), material.hex().upper(),
                     base64.b64encode(material[:12]).decode()):
            assert all(form not in text for text in texts.values())

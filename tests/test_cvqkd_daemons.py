"""Two real qkdd daemons running a GG02 (protocol "cvqkd") simulated 10 km link over loopback (real TLS peer
channel, real TCP quantum channel, real SQLite key stores): the same keys at both ends through /v1 and ETSI
014, and an entangling cloner's excess noise aborts every frame."""
from __future__ import annotations

import re

import pytest

from qkdd.link.pair import LINK_ID, LinkPair
from tests.daemon_support import wait_until

CV_LINK = {"protocol": "cvqkd"}


def available(pair, role):
    return pair.metrics(role)["keys_stored"].get("available", 0)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    with LinkPair(tmp_path_factory.mktemp("cv-pair"), distance_km=10.0, etsi014=True, extra_link=CV_LINK) as pair:
        yield pair


def test_cvqkd_keys_match_at_both_ends_through_v1_and_etsi014(pair):
    wait_until(lambda: available(pair, "alice") >= 8 and available(pair, "bob") >= 8, timeout_s=240,
               what="cvqkd keys at both ends")
    metrics = pair.metrics("alice")
    assert metrics["frames"] >= 1 and metrics["key_bits_generated"] > 0 and metrics["qber"] is None
    for requester, fetcher in (("alice", "bob"), ("bob", "alice")):
        got = pair.http.post(pair.ends[requester].url("/v1/keys/request"), json={"bits": 256, "link_id": LINK_ID})
        assert got.status_code == 200, got.text
        key = got.json()
        other = pair.http.get(pair.ends[fetcher].url(f"/v1/keys/{key['key_id']}"))
        assert other.status_code == 200, other.text
        assert other.json()["key"] == key["key"]
    with pair.mtls_client("sae-a") as master:
        enc = master.post(pair.ends["alice"].url("/api/v1/keys/sae-b/enc_keys"), json={"number": 2})
    assert enc.status_code == 200, enc.text
    keys = enc.json()["keys"]
    with pair.mtls_client("sae-b") as slave:
        dec = slave.post(pair.ends["bob"].url("/api/v1/keys/sae-a/dec_keys"),
                         json={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]})
    assert dec.status_code == 200, dec.text
    assert {k["key_ID"]: k["key"] for k in dec.json()["keys"]} == {k["key_ID"]: k["key"] for k in keys}
    # the admin control switches Eve's cloner on Alice's device at run time (its effect: the test below)
    attack = pair.ends["alice"].url(f"/v1/links/{LINK_ID}/sim/attack")
    assert pair.http.post(attack, json={"attack": "pns"}).status_code == 400
    switched = pair.http.post(attack, json={"attack": "entangling-cloner:0.1"})
    assert switched.status_code == 200 and switched.json()["cloner_excess_noise"] == 0.1
    assert pair.http.get(pair.ends["bob"].url(f"/v1/links/{LINK_ID}/sim")).json()["protocol"] == "cvqkd"


def test_entangling_cloner_aborts_every_frame(tmp_path):
    with LinkPair(tmp_path, distance_km=10.0, extra_link=CV_LINK,
                  extra_sim={"cv_cloner_excess_noise": 0.1, "cv_symbols_per_frame": 2_000_000}) as attacked:
        wait_until(lambda: attacked.metrics("alice")["frames"] >= 1, timeout_s=240, what="an attacked frame")
        for role in ("alice", "bob"):
            metrics = attacked.metrics(role)
            assert metrics["frames_aborted"] == metrics["frames"] >= 1
            assert metrics["keys_generated"] == 0
        # Bob's estimate sees the cloner's noise (0.01 nominal + 0.1): the worst case leaves no key
        log = attacked.ends["bob"].log_path.read_text()
        reasons = re.findall(r"Holevo bound leaves no key: .*?xi_max ([0-9.]+) SNU", log)
        assert reasons and all(float(xi_max) > 0.08 for xi_max in reasons)

"""Seven real qkdd daemons, each in a network namespace, on simulated links: a chain of five hops
A-B-C-D-E-F and a ring B-C-D-X. Keys requested at A through /v1/relay, and through ETSI 014 (KMEs on A,
B, D, F), come out equal at the destination over 1, 3 and 5 hops (once: a second fetch is refused); a
multi-path key travels over two node-disjoint routes; kill -9 of the relay the 5-hop route uses, with
requests in flight, leaves each delivered at both ends or at neither (the source's journal rolls the failed
ones back at the destination), and new requests reroute round the ring; kill -9 of the destination with
requests in flight settles the same way once it is restarted; a link cut (its classical channel's packets
dropped) while both its ends run is withdrawn, new requests reroute, and it returns once mended; ETSI 014
refusals for slave SAEs 3 and 5 hops away are those for A's neighbour's SAE; bad requests get clear
errors; no key appears in any node's log."""
from __future__ import annotations

import base64

import pytest

from tests.chaos_net import missing_requirements
from tests.relay_lab import RelayLab
from tests.wireguard_support import key_forms, wait_for

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(missing_requirements() is not None, reason=missing_requirements() or "")]

NODES = ["A", "B", "C", "D", "E", "F", "X"]
ETSI_NODES = ["A", "B", "D", "F"]     # an ETSI 014 KME "kme-N" for SAE "sae-N" (mTLS API) on these
LINKS = [("A", "B"), ("B", "C"), ("C", "D"), ("D", "E"), ("E", "F"), ("B", "X"), ("X", "D")]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with RelayLab(tmp_path_factory.mktemp("relay"), NODES, LINKS, trust={"X": 50}, etsi014=ETSI_NODES,
                  etsi014_elsewhere=["Z"]) as running:
        running.wait_route("A", "F", timeout_s=90)
        running.wait_route("A", "D", lambda r: "X" in r["path"], timeout_s=60)    # the ring, both ways round
        yield running


def relayed(lab, src: str, dst: str, bits: int = 256, **extra) -> tuple[dict, bytes]:
    response = lab.call(src, "POST", "/v1/relay/keys/request", {"dst": dst, "bits": bits, **extra})
    assert response.status_code == 200, (response.text, lab.routes(src, dst), lab.routes("B", dst))
    body = response.json()
    fetched = lab.call(dst, "GET", f"/v1/keys/{body['key_id']}")
    assert fetched.status_code == 200, fetched.text
    key = base64.b64decode(body["key"])
    assert base64.b64decode(fetched.json()["key"]) == key and len(key) == bits // 8
    again = lab.call(dst, "GET", f"/v1/keys/{body['key_id']}")
    assert again.status_code == 410, again.text              # served once
    return body, key


SEEN_KEYS: list[bytes] = []


@pytest.mark.parametrize("dst,hops", [("B", 1), ("D", 3), ("F", 5)])
def test_relay_equal_keys_end_to_end_over_hops(lab, dst, hops):
    lab.wait_route("A", dst, lambda r: r["hops"] == hops)
    body, key = relayed(lab, "A", dst, 256)
    assert body["hops"] == hops and body["route"][0] == "A" and body["route"][-1] == dst
    SEEN_KEYS.append(key)
    body, key = relayed(lab, "A", dst, 512)                   # more than one stored key per hop
    SEEN_KEYS.append(key)


@pytest.mark.parametrize("slave,hops", [("B", 1), ("D", 3), ("F", 5)])
def test_relay_etsi014_keys_between_saes_over_hops(lab, slave, hops):
    """Get key at A's KME for sae-N on node N (no link to A but B's), Get key with key IDs there: equal
    keys, each once; Get status names the slave's KME."""
    lab.wait_route("A", slave, lambda r: r["hops"] == hops)
    status = lab.etsi("A", f"/api/v1/keys/sae-{slave}/status")
    assert status.status_code == 200 and status.json()["target_KME_ID"] == f"kme-{slave}", status.text
    got = lab.etsi("A", f"/api/v1/keys/sae-{slave}/enc_keys", {"number": 2, "size": 256})
    assert got.status_code == 200, got.text
    keys = {k["key_ID"]: base64.b64decode(k["key"]) for k in got.json()["keys"]}
    assert len(keys) == 2 and all(len(material) == 32 for material in keys.values())
    for key_id, material in keys.items():
        fetched = lab.etsi(slave, "/api/v1/keys/sae-A/dec_keys", {"key_ID": key_id})
        assert fetched.status_code == 200, fetched.text
        assert base64.b64decode(fetched.json()["keys"][0]["key"]) == material
    again = lab.etsi(slave, "/api/v1/keys/sae-A/dec_keys", {"key_ID": list(keys)[0]})
    assert again.status_code == 400, again.text          # delivered once
    SEEN_KEYS.extend(keys.values())


def test_relay_routes_list_path_bottleneck_stock_and_trust(lab):
    routes = lab.routes("A", "D")
    assert routes and all(r["path"][0] == "A" and r["path"][-1] == "D" for r in routes)
    first = routes[0]
    assert first["hops"] == len(first["links"]) == 3 and first["stock_bits"] > 0
    assert set(first["trust"]) == {"relays", "min_relay_trust", "relays_learn_key"}
    paths = {tuple(r["path"]) for r in routes}
    assert ("A", "B", "C", "D") in paths and ("A", "B", "X", "D") in paths     # disjoint alternatives
    trusted = lab.call("A", "GET", "/v1/relay/routes?dst=D&min_trust=60").json()["routes"]
    assert [r["path"] for r in trusted] == [["A", "B", "C", "D"]]              # X announces trust 50
    everything = lab.call("A", "GET", "/v1/relay/routes").json()["routes"]
    assert {r["dst"] for r in everything} == set(NODES) - {"A"}


def test_relay_given_route_and_bad_requests(lab):
    body, _ = relayed(lab, "A", "D", 128, route=["A", "B", "X", "D"])
    assert body["route"] == ["A", "B", "X", "D"]
    cases = [({"dst": "D"}, 400), ({"dst": "D", "bits": 7}, 400), ({"dst": "no such node!", "bits": 8}, 400),
             ({"dst": "Q", "bits": 8}, 404), ({"dst": "D", "bits": 8, "route": ["A", "C", "D"]}, 409),
             ({"dst": "A", "bits": 8}, 400), ({"dst": "D", "bits": 8, "route": ["B", "C", "D"]}, 400)]
    for request, status in cases:
        response = lab.call("A", "POST", "/v1/relay/keys/request", request)
        assert response.status_code == status, (request, response.text)
        assert "message" in response.json()
    assert lab.call("D", "GET", "/v1/keys/00000000-0000-4000-8000-000000000000").status_code == 404


def test_relay_multipath_key_is_the_xor_of_shares_over_node_disjoint_routes(lab):
    lab.wait_route("B", "D", lambda r: "X" in r["path"])
    body, key = relayed(lab, "B", "D", 256, paths=2)
    routes = sorted(tuple(r) for r in body["routes"])
    assert routes == [("B", "C", "D"), ("B", "X", "D")]                    # no relay on both
    SEEN_KEYS.append(key)
    response = lab.call("A", "POST", "/v1/relay/keys/request", {"dst": "D", "bits": 64, "paths": 2})
    assert response.status_code == 503 and "node-disjoint" in response.text   # A's only link is to B
    assert lab.call("B", "POST", "/v1/relay/keys/request", {"dst": "D", "bits": 64, "paths": 9}).status_code == 400


def test_relay_reroutes_round_a_cut_link_and_takes_it_back_when_it_returns(lab):
    """Link C-D's classical channel cut silently (its packets dropped at both ends) while C and D run on: once
    the link's session times out, its ends withdraw it from their announcements, every route A -> D avoids
    it and a new request goes round the ring through X, while C and D still relay on their other links; once
    the channel is back, the session returns and so does the link, in the route list and in use."""
    lab.wait_route("A", "D", lambda r: r["links"] == ["A-B", "B-C", "C-D"])
    lab.cut("C-D")
    try:
        # at once, while the link is still announced, a request is served round it (if the cheapest route
        # takes the cut link, that attempt fails at its deadline and the retry avoids the failed route)
        body, key = relayed(lab, "A", "D", 256)
        assert body["route"] == ["A", "B", "X", "D"]
        SEEN_KEYS.append(key)
        wait_for("every route A -> D to avoid link C-D", lambda: (routes := lab.routes("A", "D")) and all(
            "C-D" not in r["links"] for r in routes), timeout_s=90, interval_s=0.25)
        body, key = relayed(lab, "A", "D", 256)
        assert body["route"] == ["A", "B", "X", "D"]
        SEEN_KEYS.append(key)
        refused = lab.call("A", "POST", "/v1/relay/keys/request",
                           {"dst": "D", "bits": 64, "route": ["A", "B", "C", "D"]})
        assert refused.status_code == 409, refused.text          # not a chain of live links any more
        for node, dst in (("C", "B"), ("D", "E")):                # both ends alive, their other links in use
            body, key = relayed(lab, node, dst, 128)
            assert body["hops"] == 1
            SEEN_KEYS.append(key)
        assert all(r["links"] != ["C-D"] for r in lab.routes("C", "D"))
    finally:
        lab.mend("C-D")
    lab.wait_route("A", "D", lambda r: r["links"] == ["A-B", "B-C", "C-D"], timeout_s=90)
    body, key = relayed(lab, "A", "D", 256, route=["A", "B", "C", "D"])
    SEEN_KEYS.append(key)


def etsi_answer(response) -> tuple[int, dict, str | None]:
    """What an SAE reads of a refusal: status, the Error data format (ETSI GS QKD 014 §6.5: "message", and
    "details" as a list of objects), and Retry-After; key ids normalised so two answers compare."""
    body = response.json()
    assert set(body) <= {"message", "details"} and isinstance(body["message"], str), body
    assert isinstance(body.get("details", []), list) and all(isinstance(d, dict) for d in body.get("details", []))
    details = [{k: ("<key_ID>" if k == "key_ID" else v) for k, v in d.items()} for d in body.get("details", [])]
    return response.status_code, {"message": body["message"], "details": details}, response.headers.get("Retry-After")


def test_relay_etsi014_errors_for_a_slave_on_a_non_adjacent_node_are_those_of_an_adjacent_one(lab):
    """Each refusal of Get key and Get key with key IDs for slave SAE sae-F (5 hops from A) or sae-D (3) is
    the one the same request gets for sae-B (A's neighbour): same status, same message and details."""
    for slave in ("B", "D", "F"):
        lab.wait_route("A", slave)
    answers: dict[str, list] = {}
    issued: dict[str, str] = {}
    for slave in ("B", "D", "F"):
        got = lab.etsi("A", f"/api/v1/keys/sae-{slave}/enc_keys", {"number": 1, "size": 256})
        assert got.status_code == 200, got.text
        issued[slave] = got.json()["keys"][0]["key_ID"]
        unknown = "00000000-0000-4000-8000-000000000017"
        answers[slave] = [etsi_answer(lab.etsi("A", f"/api/v1/keys/sae-{slave}/enc_keys", params)) for params in (
            {"number": 1, "size": 100},                       # size not a multiple of 8
            {"number": 1, "size": 8192 + 8},                  # above max_key_size
            {"number": 129, "size": 256},                     # above max_key_per_request
            {"number": 0, "size": 256},
        )] + [
            # the key id not known there, the right SAE asking
            etsi_answer(lab.etsi(slave, "/api/v1/keys/sae-A/dec_keys", {"key_ID": unknown})),
            # a real key id, but the master named is not the SAE that got it
            etsi_answer(lab.etsi(slave, "/api/v1/keys/sae-D/dec_keys" if slave != "D" else
                                 "/api/v1/keys/sae-B/dec_keys", {"key_ID": issued[slave]})),
            # a real key id at the right KME, asked by an SAE that KME does not serve (its certificate)
            etsi_answer(lab.etsi(slave, "/api/v1/keys/sae-A/dec_keys", {"key_ID": issued[slave]}, sae="sae-A")),
        ]
        # a wrong SAE at another KME asks for the key (that KME holds no such key)
        other = "B" if slave != "B" else "D"
        answers[slave].append(etsi_answer(lab.etsi(other, "/api/v1/keys/sae-A/dec_keys", {"key_ID": issued[slave]})))
    assert [a[0] for a in answers["B"]] == [400, 400, 400, 400, 400, 400, 401, 400], answers["B"]
    assert answers["D"] == answers["B"] and answers["F"] == answers["B"]
    for slave in ("B", "D", "F"):                             # the refusals did not spend the keys
        fetched = lab.etsi(slave, "/api/v1/keys/sae-A/dec_keys", {"key_ID": issued[slave]})
        assert fetched.status_code == 200, fetched.text
        SEEN_KEYS.append(base64.b64decode(fetched.json()["keys"][0]["key"]))
    # a slave SAE not of this network, and one whose KME's node the network cannot reach
    nobody = etsi_answer(lab.etsi("A", "/api/v1/keys/sae-nobody/enc_keys", {"number": 1, "size": 256}))
    assert nobody[0] == 400 and nobody[1]["details"] == [{"slave_SAE_ID": "is not an SAE of this QKD network"}]
    unreachable = etsi_answer(lab.etsi("A", "/api/v1/keys/sae-Z/enc_keys", {"number": 1, "size": 256}))
    assert unreachable[0] == 503 and unreachable[1]["message"] == "keys are not available", unreachable
    assert [set(d) for d in unreachable[1]["details"]] == [{"reason"}] and int(unreachable[2]) >= 1
    status = lab.etsi("A", "/api/v1/keys/sae-Z/status")
    assert status.status_code == 200 and status.json()["stored_key_count"] == 0, status.text


def test_relay_reroutes_after_kill_of_a_middle_node(lab):
    route = lab.wait_route("A", "F", lambda r: r["hops"] == 5)
    middle = route["path"][2]                                # C or X
    other = "X" if middle == "C" else "C"
    # requests in flight while the relay dies: each ends delivered at both ends or failed at both
    in_flight = [lab.call_soon("A", "POST", "/v1/relay/keys/request", {"dst": "F", "bits": 256}) for _ in range(6)]
    lab.kill(middle)
    for future in in_flight:
        response = future.result()
        assert response.status_code in (200, 503), response.text
        if response.status_code == 200:                      # the source served it: so does the destination
            body = response.json()
            fetched = lab.call("F", "GET", f"/v1/keys/{body['key_id']}")
            assert fetched.status_code == 200 and fetched.json()["key"] == body["key"], fetched.text
            SEEN_KEYS.append(base64.b64decode(body["key"]))
    # the failed ones settle from A's journal: rolled back at F (over the other route), none left at one end
    wait_for("A's relay journal to settle", lambda: lab.query("A", "SELECT COUNT(*) FROM relay_requests") == [(0,)],
             timeout_s=60, interval_s=0.25)
    assert lab.query("F", "SELECT COUNT(*) FROM keys WHERE link_id = 'relay' AND sealed IS NOT NULL") == [(0,)]
    wait_for(f"every route A -> F to avoid {middle}", lambda: (routes := lab.routes("A", "F")) and all(
        middle not in r["path"] for r in routes), timeout_s=30, interval_s=0.25)
    body, key = relayed(lab, "A", "F", 256)
    assert middle not in body["route"] and other in body["route"] and body["hops"] == 5
    SEEN_KEYS.append(key)
    metrics = lab.metrics("A")
    assert 'qkd_relay_requests_total{result="delivered"}' in metrics
    assert "qkd_relay_key_bits_consumed_total" in lab.metrics("B")


def test_relay_destination_killed_with_requests_in_flight_settles_after_restart(lab):
    """kill -9 of the destination with requests in flight, then a restart: every key the source served is
    served at the destination too, the others are rolled back there from the source's journal, and the
    last link's keys are held at both ends or at neither."""
    lab.wait_route("A", "F", lambda r: r["hops"] == 5)
    # a steady stream (the lab's 8 client threads each request again as soon as answered), so that the kill
    # finds requests at every stage, the destination's store and DONE on its way back among them
    in_flight = [lab.call_soon("A", "POST", "/v1/relay/keys/request", {"dst": "F", "bits": 256}) for _ in range(48)]
    stored = "SELECT COUNT(*) FROM keys WHERE link_id = 'relay' AND sealed IS NOT NULL"

    def served() -> int:
        return sum(future.done() and future.result().status_code == 200 for future in in_flight)
    # the kill as soon as F holds a key A has not served yet (its DONE on the way back), if the stream offers one
    wait_for("the stream to flow", lambda: served() >= 16 or lab.query("F", stored)[0][0] > served(),
             timeout_s=60, interval_s=0.002)
    lab.kill("F")
    responses = [future.result() for future in in_flight]
    # 200 served, 503 failed at the dead F, or 404 "not known": a request the stream's 8 threads send only after
    # those before it timed out (request_timeout_s 8 s) can reach A when F's announcement has aged out
    # (max_age_s 10 s in this lab), and then F is no longer in the relay network
    assert all(r.status_code in (200, 503) or (r.status_code == 404 and "is not known in the relay network" in r.text)
               for r in responses), [r.text for r in responses]
    lab.daemons["F"].start()
    lab.wait_route("A", "F", timeout_s=60)
    for response in responses:
        if response.status_code == 200:              # served at the source before the kill: durable at F
            body = response.json()
            fetched = lab.call("F", "GET", f"/v1/keys/{body['key_id']}")
            assert fetched.status_code == 200 and fetched.json()["key"] == body["key"], fetched.text
            SEEN_KEYS.append(base64.b64decode(body["key"]))
    wait_for("A's relay journal to settle", lambda: lab.query("A", "SELECT COUNT(*) FROM relay_requests") == [(0,)],
             timeout_s=60, interval_s=0.25)
    assert lab.query("F", "SELECT COUNT(*) FROM keys WHERE link_id = 'relay' AND sealed IS NOT NULL") == [(0,)]
    held = "SELECT key_id FROM keys WHERE link_id = 'E-F' AND sealed IS NOT NULL AND created_at < ?"
    wait_for("the seeded keys of E-F to be held at both ends or at neither", lambda: set(
        lab.query("E", held, lab.seeded_before)) == set(lab.query("F", held, lab.seeded_before)),
        timeout_s=30, interval_s=0.25)


def test_relay_no_key_in_any_log(lab):
    assert len(SEEN_KEYS) >= 3
    for node, text in lab.logs().items():
        data = text.encode()
        for key in SEEN_KEYS:
            assert not any(form in data for form in key_forms(key)), node
    wait_for("the logs to be readable", lambda: all(lab.logs().values()))

"""driver = "etsi014" at daemon level against vendor KMEs that answer too slowly or hang mid-body: two real
qkdd daemons (master and slave SAE, real processes, real mutual TLS to their KMEs, a real classical
channel) stay responsive on /v1 and /healthz, name the cause on /healthz, keep no key at one end only, and
resume by themselves once their KME is fast again. The KMEs are the scripted vendor KMEs of
tests/vendor_kme_support.py (a real ETSI 014 server over mTLS) served from a thread of this process, since
qkdd's own KME never hangs on purpose."""
from __future__ import annotations

import base64

import httpx

from qkdd.keystore import KeyState, KeyStore, load_kek
from qkdd.peer import generate_identity, save_private_key, save_public_key
from qkdd.pki import init_pki
from tests.daemon_support import Daemon, base_config, clean_env, wait_until
from tests.etsi014_support import free_port
from tests.test_driver_etsi014 import relay_end_config
from tests.vendor_kme_support import KmeThread, ScriptedKme, SharedKeys

LINK = "vendor-ab"
TIMEOUT_S = 1.0                   # the daemons' KME timeout; the scripted faults last far longer


def link_of(http: httpx.Client, daemon: Daemon) -> dict:
    [link] = http.get(daemon.health_url + "/healthz").json()["links"]
    return link


def responsive(http: httpx.Client, daemon: Daemon) -> None:
    """/healthz and /v1 answer (within the client's timeout): a key, or a clear 503 while none is stored."""
    assert http.get(daemon.health_url + "/healthz").status_code in (200, 503)
    response = http.post(daemon.api_url + "/v1/keys/request", json={"bits": 256, "link_id": LINK})
    assert response.status_code in (200, 503), response.text


def shared_key(http: httpx.Client, master: Daemon, slave: Daemon) -> bytes:
    """A key requested at the master's /v1, fetched by id at the slave's: the same bytes."""
    holder = {}

    def requested() -> bool:
        response = http.post(master.api_url + "/v1/keys/request", json={"bits": 256, "link_id": LINK})
        holder["key"] = response.json() if response.status_code == 200 else None
        return holder["key"] is not None
    wait_until(requested, 60, "a key at the master's /v1")
    key = holder["key"]
    fetched = http.get(slave.api_url + f"/v1/keys/{key['key_id']}", params={"link_id": LINK}).json()
    assert fetched["key"] == key["key"]
    return base64.b64decode(key["key"])


def test_driver_etsi014_daemons_stay_responsive_while_their_vendor_kmes_are_slow_or_hang(tmp_path):
    pki = init_pki(tmp_path / "pki", ["kme-a", "kme-b"], ["sae-a", "sae-b"])
    shared = SharedKeys()
    kme_a, kme_b = (ScriptedKme(name, shared, pki.kmes[name].cert_file, pki.kmes[name].key_file, pki.ca_cert_file)
                    for name in ("kme-a", "kme-b"))
    kmes = KmeThread(kme_a, kme_b).start()
    ends: dict[str, Daemon] = {}
    try:
        peer_port = free_port()
        for name in ("end-a", "end-b"):
            (tmp_path / name / "state").mkdir(parents=True, mode=0o700)
            identity = generate_identity()
            save_private_key(identity, tmp_path / name / "identity.key")
            save_public_key(identity.public_key(), tmp_path / name / "identity.pub")
        for name, kme, master in (("end-a", kme_a, True), ("end-b", kme_b, False)):
            links = relay_end_config(tmp_path, pki, name, kme.url, "end-b" if master else "end-a", master=master,
                                     peer_port=peer_port) + f"timeout_s = {TIMEOUT_S}\nfetch_retry_s = 2.0\n"
            ends[name] = Daemon(base_config(tmp_path / name / "state", links=links), tmp_path / name,
                                clean_env()).start()
        master, slave = ends["end-a"], ends["end-b"]
        with httpx.Client(timeout=10) as http:
            before = shared_key(http, master, slave)

            # the slave's KME hands the keys out, then hangs mid-body: dec_keys times out, the retry finds the
            # keys gone, the slave refuses the batch and the master discards its copy
            kme_b.fault = "hang_body"
            wait_until(lambda: "could not fetch key batch" in link_of(http, master)["detail"], 60,
                       "the master reporting the refused batch")
            wait_until(lambda: f"no answer within {TIMEOUT_S:g} s" in link_of(http, slave)["detail"], 30,
                       "the slave naming its KME's timeout")
            assert kme_b.url in link_of(http, slave)["detail"]
            for daemon in (master, slave):
                responsive(http, daemon)

            # the master's KME answers slower than the timeout: enc_keys and Get status time out
            kme_b.fault, kme_a.fault = None, "slow"
            master.wait_for(rf"Get key: no answer within {TIMEOUT_S:g} s", 30)
            wait_until(lambda: f"no answer within {TIMEOUT_S:g} s" in link_of(http, master)["detail"], 30,
                       "the master naming its KME's timeout")
            assert link_of(http, master)["state"] == "fallback" and kme_a.url in link_of(http, master)["detail"]
            for daemon in (master, slave):
                responsive(http, daemon)

            # fast again: keys flow by themselves
            kme_a.fault = None
            taken = shared.taken
            wait_until(lambda: shared.taken >= taken + 32 and link_of(http, master)["state"] == "running", 60,
                       "keys relayed again")
            after = shared_key(http, master, slave)
            assert after != before and len(after) == 32
        for daemon in ends.values():
            assert daemon.stop() == 0
    finally:
        for daemon in ends.values():
            daemon.kill()
        kmes.stop()
    assert "Traceback" not in "".join(master.lines + slave.lines)
    # each fault episode is one line in the daemon's log however often the engine retried meanwhile
    assert sum("Get key: no answer within" in line for line in master.lines) == 1, "".join(master.lines)
    assert sum("vendor KME: answers again" in line for line in master.lines) == 1, "".join(master.lines)
    # nor does the link's state flap with each retry (every flip is a "state changed" line): one fallback per
    # phase at most, and the slave's only in the first
    flips = {name: sum(f"{LINK}: running -> fallback" in line for line in daemon.lines)
             for name, daemon in ends.items()}
    assert flips["end-a"] <= 2 and flips["end-b"] <= 1, flips

    # no key at one end only: every key available at either end is held, with the same bytes, at the other
    # (but for the one batch in flight at shutdown: stored by the slave, still pending at the master)
    stores = {name: KeyStore(str(tmp_path / name / "state" / "keys.sqlite3"),
                             load_kek(str(tmp_path / name / "state" / "kek"))) for name in ends}
    inventory = {name: store.inventory(LINK) for name, store in stores.items()}
    available = {name: {k for k, s in inv.items() if s is KeyState.AVAILABLE} for name, inv in inventory.items()}
    pending = {k for k, s in inventory["end-a"].items() if s is KeyState.PENDING}
    assert len(available["end-a"]) >= 32
    assert available["end-a"] <= available["end-b"], "a key available at the master only"
    assert available["end-b"] <= available["end-a"] | pending, "a key available at the slave only"
    assert len(available["end-b"] - available["end-a"]) <= 16
    for key_id in available["end-b"]:
        assert stores["end-a"].peek(LINK, key_id).material == stores["end-b"].peek(LINK, key_id).material
    for store in stores.values():
        store.close()

"""E91 and CV-QKD keys through every interface: for each protocol one pair of real `qkdd run` daemons on a
simulated link (qkdd.link.pair: real TLS peer channel, real SQLite key stores) with every consumer configured
at once: ETSI GS QKD 004 streams (OPEN_CONNECT and GET_KEY at both ends give the same chunks), SKIP over
TLS-PSK (a router's key at one end is the other router's key by id), a WireGuard tunnel (both ends agree an
epoch and install the same PSK into real wireguard-go interfaces in network namespaces, and the handshake
goes through with it), IKEv2 PPKs (both ends load the same PPK into real strongSwan charons in network
namespaces and the IKE SA comes up with ppk_required), and KMS push (both ends push the same key to their own
KMS, tests/kms_server.py). The WireGuard and IKEv2 parts need root and their tools; they skip otherwise.
The /v1 and ETSI 014 routes of these protocols are tested in test_e91_link.py and test_cvqkd_daemons.py."""
from __future__ import annotations

import base64
import re
import time
import uuid
from dataclasses import dataclass

import pytest
import trio

from qkdd.etsi004.wire import GetKey, OpenConnect, Status
from qkdd.keystore import KeyStore, kek_for_state_dir
from qkdd.link.pair import LINK_ID, LinkPair, free_port
from qkdd.link.service import KEYSTORE_FILE
from tests.daemon_support import wait_until
from tests.etsi004_support import ROUTERS, SYSTEMS, Client004, qos, skip_get
from tests.kms_server import FakeKms, KmsInThread
from tests.strongswan_support import CharonPair
from tests.strongswan_support import missing_requirements as ipsec_missing
from tests.wireguard_support import WgPair, missing_requirements

# the protocols' own settings, as their daemon tests run them (E91: the pair source on Bob's host)
PROTOCOLS = {
    "e91": {"frame_detections": 300_000, "extra_link": {"protocol": "e91"},
            "extra_sim": {"source_host": "bob", "e91_alice_key_prob": 0.8, "e91_bob_key_prob": 0.7}},
    "cvqkd": {"extra_link": {"protocol": "cvqkd"}},
}
END = {"alice": "a", "bob": "b"}
KME = {"alice": "kme-a", "bob": "kme-b"}
TUNNEL = "site-a-b"
IKE = "site-a-b-ike"
KMS_PREFIX = "QKD_PROTO_PUSH_"
KEY_WAIT_S = 180.0              # the first keys of a CV-QKD link on a loaded 2-core machine
FIRST_CHUNK_WAIT_MS = 60_000


def consumers_config(pair: LinkPair, role: str, ports: dict, kms_url: str, wg, charons) -> str:
    """`[etsi004]`, `[skip]`, `[kms]` with one `[[kms_push]]`, (with `wg`, a WgPair) one `[[wireguard]]` and
    (with `charons`, a CharonPair) one `[[ipsec]]`, alice the initiator."""
    end, other = END[role], END["bob" if role == "alice" else "alice"]
    issued = pair.pki.kmes[KME[role]]
    identity, psk = ROUTERS[end]
    psk_file = pair.workdir / f"router-{end}.psk"
    psk_file.write_text(psk.hex() + "\n")
    text = f"""
[etsi004]
link_id = "{LINK_ID}"
listen = "127.0.0.1:{ports['etsi004']}"
[etsi004.tls]
cert_file = "{issued.cert_file}"
key_file = "{issued.key_file}"
client_ca_file = "{pair.pki.ca_cert_file}"
client_cert = "required"

[skip]
local_system_id = "{SYSTEMS[end]}"
listen = "127.0.0.1:{ports['skip']}"
[[skip.remotes]]
system_id = "{SYSTEMS[other]}"
link_id = "{LINK_ID}"
[[skip.clients]]
identity = "{identity}"
psk_file = "{psk_file}"

[kms]
enabled = true
url = "{kms_url}"
client_id = "qkd-agent"
client_secret = "{FakeKms().client_secret}"
project = "qkd-keys"
environment = "production"

[[kms_push]]
name = "proto-push"
link_id = "{LINK_ID}"
rotation_interval_s = 3600
activation_delay_s = 0.5
retry_interval_s = 0.2
retry_max_s = 1.0
"""
    if wg is not None:
        here, there = (wg.a, wg.b) if role == "alice" else (wg.b, wg.a)
        # the daemon runs on the host's loopback and drives the interface in its namespace through
        # wireguard-go's control socket (/var/run/wireguard/IF.sock serves every namespace)
        text += f"""
[[wireguard]]
name = "{TUNNEL}"
link_id = "{LINK_ID}"
interface = "{here.interface}"
peer_public_key = "{there.public_key}"
rotation_interval_s = 3600
activation_delay_s = 0.5
retry_interval_s = 0.3
"""
    if charons is not None:
        charon = charons.a if role == "alice" else charons.b
        text += f"""
[[ipsec]]
name = "{IKE}"
link_id = "{LINK_ID}"
connection = "qkd"
initiator = {str(role == "alice").lower()}
vici_socket = "{charon.vici}"
swanctl_conf = "{charon.swanctl_conf}"
rotation_interval_s = 3600
activation_delay_s = 0.5
retry_interval_s = 0.3
retry_max_s = 2.0
"""
    return text


@dataclass
class Setup:
    protocol: str
    pair: LinkPair
    ports: dict                       # role -> {"etsi004": port, "skip": port}
    kmss: dict                        # role -> FakeKms
    wg: WgPair | None                 # None: no real WireGuard here
    charons: CharonPair | None        # None: no real strongSwan here


@pytest.fixture(scope="module", params=sorted(PROTOCOLS))
def setup(request, tmp_path_factory):
    """One daemon pair per protocol with every consumer configured."""
    protocol = request.param
    root = tmp_path_factory.mktemp(f"interfaces-{protocol}")
    wg = WgPair(root) if missing_requirements() is None else None
    charons = CharonPair(root / "charon") if ipsec_missing() is None else None
    kmss = {"alice": FakeKms(clock=time.monotonic), "bob": FakeKms(clock=time.monotonic)}
    try:
        if wg is not None:
            wg.up()
        if charons is not None:
            charons.up()                          # (tears down what it set up when it fails)
        with KmsInThread(kmss["alice"]) as kms_a, KmsInThread(kmss["bob"]) as kms_b:
            pair = LinkPair(root / "pair", distance_km=10.0, admin_tls=True, **PROTOCOLS[protocol])
            pair.write()
            ports = {role: {"etsi004": free_port(), "skip": free_port()} for role in ("alice", "bob")}
            for role, kms in (("alice", kms_a), ("bob", kms_b)):
                with open(pair.ends[role].config_path, "a") as config:
                    config.write(consumers_config(pair, role, ports[role], kms.url, wg, charons))
            try:
                for role in ("alice", "bob"):
                    pair.start(role)
                for role in ("alice", "bob"):
                    pair.wait_ready(role)
                wait_until(lambda: all(pair.metrics(role)["keys_generated"] > 0 for role in ("alice", "bob")),
                           KEY_WAIT_S, f"{protocol} keys at both ends")
                yield Setup(protocol, pair, ports, kmss, wg, charons)
            finally:
                pair.stop()
    finally:
        if wg is not None:
            wg.down()
        if charons is not None:
            charons.down()


def client004(pair: LinkPair, role: str, ports: dict) -> Client004:
    app = {"alice": "sae-a", "bob": "sae-b"}[role]
    return Client004(pair.pki, app, KME[role], ("127.0.0.1", ports[role]["etsi004"]))


def test_etsi004_streams_at_both_ends_give_equal_chunks(setup):
    protocol, pair, ports = setup.protocol, setup.pair, setup.ports
    ksid = str(uuid.uuid4())

    async def main():
        chunks = {}
        async with client004(pair, "alice", ports) as a, client004(pair, "bob", ports) as b:
            for client in (a, b):
                opened = await client.call(OpenConnect("app://x", "app://y", qos(32, timeout_ms=FIRST_CHUNK_WAIT_MS),
                                                       ksid))
                assert opened.status is Status.SUCCESSFUL, opened.status
            for index in range(4):                   # each end asks first for every other index
                first, second = (a, b) if index % 2 else (b, a)
                got = [await client.call(GetKey(ksid, index, 1024)) for client in (first, second)]
                assert [r.status for r in got] == [Status.SUCCESSFUL] * 2, (protocol, index)
                assert got[0].key == got[1].key and len(got[0].key) == 32
                chunks[index] = got[0].key
        return chunks

    chunks = trio.run(main)
    assert len(set(chunks.values())) == 4


def test_skip_a_routers_key_at_one_end_is_the_others_by_id(setup):
    ports = setup.ports

    async def main():
        a, b = ("127.0.0.1", ports["alice"]["skip"]), ("127.0.0.1", ports["bob"]["skip"])
        with trio.fail_after(90):
            while True:          # 503 until this end holds a key the other consumers left (a frame's worth)
                status, key = await skip_get(a, *ROUTERS["a"], f"/key?remoteSystemID={SYSTEMS['b']}&size=256")
                if status != 503:
                    break
                await trio.sleep(0.5)
        assert status == 200, key
        status, same = await skip_get(b, *ROUTERS["b"], f"/key/{key['keyId']}?remoteSystemID={SYSTEMS['a']}")
        assert status == 200 and same == key and len(key["key"]) == 64
        status, _ = await skip_get(b, *ROUTERS["b"], f"/key/{key['keyId']}?remoteSystemID={SYSTEMS['a']}")
        assert status == 404                              # handed over once
    trio.run(main)


def reserved_key(pair: LinkPair, role: str, holder: str) -> tuple[str, bytes] | None:
    """The one key `role`'s store holds reserved for `holder` (id, material), or None."""
    state_dir = pair.ends[role].state_dir
    store = KeyStore(str(state_dir / KEYSTORE_FILE), kek_for_state_dir(str(state_dir)))
    try:
        reserved = store.reserved_for(LINK_ID, holder)
        return (reserved[0], store.peek(LINK_ID, reserved[0]).material) if len(reserved) == 1 else None
    finally:
        store.close()


@pytest.mark.root
def test_wireguard_ends_agree_an_epoch_and_the_tunnel_handshakes_with_its_psk(setup):
    protocol, pair, wg = setup.protocol, setup.pair, setup.wg
    if wg is None:
        pytest.skip(f"real WireGuard {missing_requirements()}")

    def agreed():
        a, b = wg.a.psk(), wg.b.psk()
        return a if a == b != "(none)" else None
    wait_until(agreed, 60, "the same PSK at both interfaces")
    psk = agreed()
    in_use = [reserved_key(pair, role, f"wireguard:{TUNNEL}") for role in ("alice", "bob")]
    assert in_use[0] is not None and in_use[0] == in_use[1], protocol      # same id, same material
    assert base64.b64encode(in_use[0][1]).decode() == psk
    for _ in range(2):                             # a fresh handshake under this PSK carries traffic
        wg.a.force_handshake()
        if wg.a.ping(count=2, wait_s=2) and wg.a.latest_handshake() > 0:
            break
    else:
        pytest.fail("no handshake with the agreed PSK")

    def recorded_key_ids() -> set:
        """The key id each end's /v1/links shows for the tunnel (recorded just after its install)."""
        records = [pair.http.get(pair.ends[role].url("/v1/links")).json()["links"][0]["consumers"]
                   for role in ("alice", "bob")]
        return {next(c for c in listed if c["kind"] == "wireguard")["key_id"] for listed in records}
    wait_until(lambda: recorded_key_ids() == {in_use[0][0]}, 10, "both ends' epoch records")


def test_kms_push_puts_the_same_key_into_both_kmss(setup):
    protocol, pair, kmss = setup.protocol, setup.pair, setup.kmss

    def pushed(name: str) -> tuple:
        return tuple(kmss[role].value(KMS_PREFIX + name) for role in ("alice", "bob"))
    wait_until(lambda: None not in pushed("GENERATED_AT") and len(set(pushed("KEY_ID"))) == 1, 60,
               "the first push at both KMSs")
    current = pushed("AES256_CURRENT")
    assert current[0] == current[1] and len(base64.b64decode(current[0])) == 32
    key_id = pushed("KEY_ID")[0]
    for role in ("alice", "bob"):
        assert reserved_key(pair, role, "kms:proto-push") in (None, (key_id, base64.b64decode(current[0])))
    qber = pushed("QBER")
    assert qber[0] == qber[1]
    if protocol == "cvqkd":
        assert qber[0] == ""                       # GG02 has no bit error rate before reconciliation
    else:
        assert 0 <= float(qber[0]) < 0.11


@pytest.mark.root
def test_ikev2_ends_load_the_same_ppk_and_the_ike_sa_comes_up_with_it(setup):
    protocol, pair, charons = setup.protocol, setup.pair, setup.charons
    if charons is None:
        pytest.skip(f"real strongSwan {ipsec_missing()}")

    def records() -> list[dict]:
        return [next(c for c in pair.http.get(f"http://{pair.ends[role].health}/healthz").json()["consumers"]
                     if c["kind"] == "ipsec") for role in ("alice", "bob")]

    def agreed() -> bool:
        a, b = records()
        return a["epoch"] == b["epoch"] == 1 and a["key_id"] == b["key_id"] is not None
    wait_until(agreed, 90, "the IKEv2 consumers at epoch 1 at both ends")
    key_id = records()[0]["key_id"]
    wait_until(lambda: [sa["ppk"] for sa in charons.b.ike_sas() if sa["state"] == "ESTABLISHED"] == ["yes"], 30,
               "the IKE SA with ppk_required")
    for charon in (charons.a, charons.b):             # both charons derived the SA's keys with this link's key
        assert re.findall(r"using PPK for PPK_ID '([^']+)'", charon.log())[-1:] == [key_id], protocol
    assert charons.a.ping_peer(), "no traffic through the tunnel"

"""driver = "etsi014": each qkdd end is an SAE of its own vendor KME over real mutual TLS; the master takes
keys with enc_keys, relays their IDs over the authenticated classical channel, the slave fetches them
with dec_keys; both stores hold the same keys. End to end against two real qkdd daemons serving ETSI 014
as the vendor KMEs (real processes), and the faults against a scriptable vendor KME (real TLS server)."""
from __future__ import annotations

import base64
import time

import httpx
import pytest
import trio

from qkdd.hal.etsi014.client import Etsi014Client, Etsi014Error, tls_context
from qkdd.hal.etsi014.device import Etsi014Device
from qkdd.hal.etsi014.settings import Etsi014DeviceConfig, kme_base_url
from qkdd.health import Health
from qkdd.keystore import KeyState, KeyStore
from qkdd.link import key_relay_messages as relay
from qkdd.link.key_relay import KeyRelayEngine
from qkdd.link.key_requests import KeyRequests
from qkdd.link.pipeline import PipelineSettings
from qkdd.link_channel import LinkChannel
from qkdd.peer import generate_identity
from qkdd.pki import init_pki
from qkdd.reservation.service import ReservationService
from tests.daemon_support import Daemon, base_config, clean_env
from tests.etsi014_support import free_port, make_pair
from tests.peer_harness import fast_settings
from tests.vendor_kme_support import ScriptedKme, SharedKeys

LINK = "vendor-ab"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return init_pki(tmp_path_factory.mktemp("vendor-pki"), ["kme-a", "kme-b"], ["sae-a", "sae-b"])


def device_config(pki, sae, peer, **changes):
    issued = pki.saes[sae]
    values = dict(sae_id=sae, peer_sae_id=peer, cert_file=str(issued.cert_file), key_file=str(issued.key_file),
                  ca_file=str(pki.ca_cert_file), keys_per_request=8, request_interval_s=0.05, timeout_s=15.0,
                  fetch_retry_s=0.5)
    values.update(changes)
    return Etsi014DeviceConfig(**values)


def scripted(pki, name, shared):
    issued = pki.kmes[name]
    return ScriptedKme(name, shared, issued.cert_file, issued.key_file, pki.ca_cert_file)


# ---- the client against a misbehaving KME ----------------------------------------------------------
@pytest.mark.parametrize("fault, kind, words", [
    ("401", "unauthorized", "HTTP 401 (the KME does not accept this SAE's certificate): unknown SAE certificate"),
    ("503", "unavailable", "HTTP 503: key store empty"),
    ("malformed", "malformed", "the answer is not JSON"),
    ("short_key", "malformed", "keys[0] has 128 bits, asked for 256"),
    ("down", "unreachable", "RemoteProtocolError"),
    ("slow", "timeout", "no answer within 3 s"),
])
def test_driver_etsi014_client_names_each_vendor_fault(pki, fault, kind, words):
    async def main():
        kme = scripted(pki, "kme-a", SharedKeys())
        async with trio.open_nursery() as nursery:
            await nursery.start(kme.serve)
            config = device_config(pki, "sae-a", "sae-b")
            context = tls_context(config.cert_file, config.key_file, config.ca_file)
            healthy = Etsi014Client(kme.url, context, timeout_s=30)   # generous: a loaded machine is no fault
            keys = await healthy.enc_keys("sae-b", 2, 256)             # healthy first
            await healthy.aclose()
            client = Etsi014Client(kme.url, context, timeout_s=3 if fault == "slow" else 30)
            assert [len(k.material) for k in keys] == [32, 32]
            kme.fault = fault
            with pytest.raises(Etsi014Error) as caught:
                await client.enc_keys("sae-b", 2, 256)
            assert caught.value.kind == kind and words in str(caught.value)
            assert kme.url in str(caught.value) and "Get key" in str(caught.value)
            for key in keys:                                          # no key material in errors or reprs
                assert base64.b64encode(key.material).decode() not in str(caught.value) + repr(key)
            await client.aclose()
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_driver_etsi014_client_kme_not_listening_and_bad_addresses(pki):
    async def main():
        config = device_config(pki, "sae-a", "sae-b")
        client = Etsi014Client(f"https://127.0.0.1:{free_port()}",
                               tls_context(config.cert_file, config.key_file, config.ca_file), timeout_s=1)
        with pytest.raises(Etsi014Error) as caught:
            await client.status("sae-b")
        assert caught.value.kind == "unreachable" and caught.value.transient and "Get status" in str(caught.value)
        await client.aclose()
    trio.run(main)
    with pytest.raises(Etsi014Error, match="SAE certificate /nonexistent.pem"):
        tls_context("/nonexistent.pem", "/nonexistent.key", str(pki.ca_cert_file))
    assert kme_base_url("kme.example", "idq") == "https://kme.example:443"
    assert kme_base_url("https://10.0.0.5:8443/", "etsi014") == "https://10.0.0.5:8443"
    for bad in ("http://kme.example", "kme example", "kme:99999"):
        with pytest.raises(ValueError):
            kme_base_url(bad, "etsi014")


def test_driver_etsi014_relay_messages_round_trip_and_refuse_garbage():
    ids = ("a1", "b-2", "c" * 128)
    assert relay.decode(relay.encode(relay.Message(relay.Kind.OFFER, 7, ids))).vendor_key_ids == ids
    refuse = relay.decode(relay.encode(relay.Message(relay.Kind.REFUSE, 7, reason="KME down")))
    assert (refuse.kind, refuse.reason) == (relay.Kind.REFUSE, "KME down")
    master = relay.MasterRelay()
    offer = master.offer(9, ["x"])
    with pytest.raises(relay.RelayProtocolError, match="still awaits"):
        master.offer(10, ["y"])
    with pytest.raises(relay.RelayProtocolError, match="ACCEPT of batch 8 while awaiting for batch 9"):
        master.answer(relay.encode(relay.Message(relay.Kind.ACCEPT, 8)))
    assert master.answer(relay.encode(relay.Message(relay.Kind.ACCEPT, 9))).kind is relay.Kind.ACCEPT
    long = relay.decode(relay.encode(relay.Message(relay.Kind.REFUSE, 1, reason="é" * 400 + "\n")))
    assert long.reason == "é" * 256                     # cut at whole characters, within 512 bytes
    assert relay.decode(relay.encode(relay.Message(relay.Kind.REFUSE, 1, reason="a\nb"))).reason == "a?b"
    bad_utf8 = relay.encode(relay.Message(relay.Kind.REFUSE, 7, reason="KME down")).replace(b"o", b"\xbc")
    for garbage in (b"", b"QKVR", offer[:-1], offer + b"x", b"XXXX" + offer[4:], offer[:4] + b"\x02" + offer[5:],
                    bad_utf8,
                    relay.encode(relay.Message(relay.Kind.OFFER, 1, ("a", "a")))):
        with pytest.raises(relay.RelayProtocolError):
            relay.decode(garbage)
    assert relay.key_id_for(LINK, "k") == relay.key_id_for(LINK, "k") != relay.key_id_for("other", "k")


# ---- two relay ends over a real classical channel -----------------------------------------------------
class RelayEnd:
    def __init__(self, role, device, store, peer_settings, identity, peer_key, health):
        self.channel = LinkChannel(LINK, peer_settings, identity, peer_key)
        self.reservations = ReservationService(LINK, self.channel)
        self.engine = KeyRelayEngine(LINK, role, device, store, self.channel, health=health,
                                     settings=PipelineSettings(key_bits=256))
        self.keys = KeyRequests(LINK, store, self.reservations, key_bits=256)
        self.store = store

    async def start(self, nursery):
        await nursery.start(self.engine.run)
        await nursery.start(self.channel.run)

    def available(self) -> dict[str, bytes]:
        return {key_id: self.store.peek(LINK, key_id).material
                for key_id, state in self.store.inventory(LINK).items() if state is KeyState.AVAILABLE}


async def relay_pair(nursery, tmp_path, pki, url_a, url_b, **changes):
    alice_id, bob_id = generate_identity(), generate_identity()
    health = {role: Health() for role in ("alice", "bob")}
    for role in health:
        health[role].register_link(LINK)
    alice = RelayEnd("alice", Etsi014Device(url_a, device_config(pki, "sae-a", "sae-b", **changes)),
                     KeyStore(str(tmp_path / "alice.db"), bytes(32)), fast_settings(LINK, listen=("127.0.0.1", 0)),
                     alice_id, bob_id.public_key(), health["alice"])
    await alice.start(nursery)
    bob = RelayEnd("bob", Etsi014Device(url_b, device_config(pki, "sae-b", "sae-a", **changes)),
                   KeyStore(str(tmp_path / "bob.db"), bytes(32)),
                   fast_settings(LINK, dial=("127.0.0.1", alice.channel.connector.listen_port)),
                   bob_id, alice_id.public_key(), health["bob"])
    await bob.start(nursery)
    return alice, bob, health


async def wait_for(predicate, timeout_s=90.0):
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.05)


def assert_no_key_at_one_end_only(alice, bob):
    """Every key available at one end is held, with the same bytes, at the other; the only difference
    allowed is the one batch in flight (stored at the slave, still pending at the master)."""
    # the engines write from worker threads meanwhile: read in the order each claim needs (the slave stores
    # a batch before the master commits it, and after the master stored it pending)
    committed_before = alice.available()
    b = bob.available()
    pending = {k for k, s in alice.store.inventory(LINK).items() if s is KeyState.PENDING}
    a = alice.available()
    assert len(pending) <= 8                  # at most the one batch in flight
    assert set(committed_before) <= set(b), "a key available at the master only"
    assert set(b) <= set(a) | pending, "a key available at the slave only"
    for key_id, material in b.items():
        held = a.get(key_id) or alice.store.peek(LINK, key_id).material
        assert held == material, "different bytes at the two ends"


def test_driver_etsi014_relay_survives_vendor_faults_and_resumes(tmp_path, pki):
    async def main():
        shared = SharedKeys()
        kme_a, kme_b = scripted(pki, "kme-a", shared), scripted(pki, "kme-b", shared)
        async with trio.open_nursery() as nursery:
            await nursery.start(kme_a.serve)
            await nursery.start(kme_b.serve)
            alice, bob, health = await relay_pair(nursery, tmp_path, pki, kme_a.url, kme_b.url)
            await wait_for(lambda: len(bob.available()) >= 24)
            assert_no_key_at_one_end_only(alice, bob)
            assert alice.engine.status.state == "running" and alice.engine.status.rates()[0] > 0

            # the slave's KME cannot deliver the IDs: the batch is refused, the master discards its copy
            # (a batch the slave fetched before the fault may still be accepted: count from the first refusal)
            kme_b.fault = "not_found"
            await wait_for(lambda: "could not fetch key batch" in health["alice"].link_state(LINK).detail)
            first_refusal = health["alice"].link_state(LINK).detail
            refused = alice.engine.status.totals["keys"]
            assert "not found on KME" in first_refusal
            assert health["alice"].link_state(LINK).state == "fallback"
            await wait_for(lambda: health["alice"].link_state(LINK).detail not in ("", first_refusal)
                           and "could not fetch key batch" in health["alice"].link_state(LINK).detail)
            assert alice.engine.status.totals["keys"] == refused
            # the slave's KME down: dec_keys retried for fetch_retry_s, then refused; /healthz names the KME
            kme_b.fault = "down"
            await wait_for(lambda: "RemoteProtocolError" in health["bob"].link_state(LINK).detail)
            assert kme_b.url in health["bob"].link_state(LINK).detail
            await trio.sleep(1.0)
            assert_no_key_at_one_end_only(alice, bob)
            # the master's KME answers 503, then malformed JSON: nothing is taken, nothing stored
            kme_b.fault = None
            for fault, words in (("503", "HTTP 503"), ("malformed", "not JSON"), ("short_key", "has 128 bits")):
                kme_a.fault = fault
                await wait_for(lambda: words in health["alice"].link_state(LINK).detail)
            kme_a.fault = None
            # back by itself
            before = len(bob.available())
            await wait_for(lambda: len(bob.available()) >= before + 16
                           and health["alice"].link_state(LINK).state == "running")
            assert_no_key_at_one_end_only(alice, bob)
            # /v1 at the master end, fetched by id at the slave end: same bytes
            key = await alice.keys.request_key(256)
            assert (await bob.keys.fetch_key(key.key_id)).material == key.material
            nursery.cancel_scope.cancel()
    trio.run(main)


# ---- end to end: two qkdd daemons as the vendor KMEs, two qkdd daemons with driver = "etsi014" ------------
def relay_end_config(root, pki_dir_pki, name, kme_url, peer_identity, *, master, peer_port):
    sae, peer_sae = ("sae-a", "sae-b") if master else ("sae-b", "sae-a")
    issued = pki_dir_pki.saes[sae]
    session = f'peer_listen = "127.0.0.1:{peer_port}"' if master else f'peer_addr = "127.0.0.1:{peer_port}"'
    return (f'[[links]]\nlink_id = "{LINK}"\nrole = "{"alice" if master else "bob"}"\ndriver = "etsi014"\n'
            f'device_addr = "{kme_url}"\n{session}\npeer_key_file = "{root / name / "identity.key"}"\n'
            f'peer_public_key = "{root / peer_identity / "identity.pub"}"\n'
            f'[links.etsi014]\nsae_id = "{sae}"\npeer_sae_id = "{peer_sae}"\ncert_file = "{issued.cert_file}"\n'
            f'key_file = "{issued.key_file}"\nca_file = "{pki_dir_pki.ca_cert_file}"\nkeys_per_request = 16\n'
            'request_interval_s = 0.1\n')


def test_driver_etsi014_end_to_end_over_two_qkdd_kme_daemons(tmp_path):
    from qkdd.peer import save_private_key, save_public_key
    kmes, _ = make_pair(tmp_path / "vendor", stored_keys=400)
    ends = {}
    try:
        for name in ("kme-b", "kme-a"):
            kmes.start(name)
        for name in ("kme-a", "kme-b"):
            kmes.wait_channel(name)
        peer_port = free_port()
        for name in ("end-a", "end-b"):
            (tmp_path / name / "state").mkdir(parents=True, mode=0o700)
            identity = generate_identity()
            save_private_key(identity, tmp_path / name / "identity.key")
            save_public_key(identity.public_key(), tmp_path / name / "identity.pub")
        for name, kme, master in (("end-a", "kme-a", True), ("end-b", "kme-b", False)):
            links = relay_end_config(tmp_path, kmes.pki, name, kmes.url(kme, ""), "end-b" if master else "end-a",
                                     master=master, peer_port=peer_port)
            ends[name] = Daemon(base_config(tmp_path / name / "state", links=links), tmp_path / name,
                                clean_env()).start()
        ends["end-a"].wait_for(r"vendor KME key relay, master end", timeout_s=60)
        with httpx.Client(timeout=10) as http:
            deadline = time.monotonic() + 60
            while True:
                response = http.post(ends["end-a"].api_url + "/v1/keys/request", json={"bits": 256, "link_id": LINK})
                if response.status_code == 200:
                    break
                assert time.monotonic() < deadline, response.text
                time.sleep(0.2)
            key = response.json()
            fetched = http.get(ends["end-b"].api_url + f"/v1/keys/{key['key_id']}", params={"link_id": LINK}).json()
            assert fetched["key"] == key["key"] and len(base64.b64decode(key["key"])) == 32
            # the other way round: the slave end allocates from its own share
            key = http.post(ends["end-b"].api_url + "/v1/keys/request", json={"bits": 128, "link_id": LINK}).json()
            fetched = http.get(ends["end-a"].api_url + f"/v1/keys/{key['key_id']}", params={"link_id": LINK}).json()
            assert fetched["key"] == key["key"]
            deadline = time.monotonic() + 15          # the KME's Get status is polled every 2 s
            while "keys stored for sae-b" not in str(http.get(ends["end-a"].health_url + "/healthz").json()):
                assert time.monotonic() < deadline
                time.sleep(0.2)
            [link] = http.get(ends["end-a"].health_url + "/healthz").json()["links"]
            assert link["state"] == "running" and "kme-a at https://127.0.0.1:" in link["detail"]
    finally:
        for daemon in ends.values():
            daemon.kill()
        kmes.stop_all()


def test_driver_etsi014_unreadable_certificate_leaves_the_link_failed_not_the_daemon_down(tmp_path, pki):
    async def main():
        health = Health()
        health.register_link(LINK)
        identity = generate_identity()
        channel = LinkChannel(LINK, fast_settings(LINK, listen=("127.0.0.1", 0)), identity, identity.public_key())
        device = Etsi014Device(f"https://127.0.0.1:{free_port()}",
                               device_config(pki, "sae-a", "sae-b", cert_file=str(tmp_path / "missing.pem")))
        engine = KeyRelayEngine(LINK, "alice", device, KeyStore(str(tmp_path / "a.db"), bytes(32)), channel,
                                health=health)
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            await wait_for(lambda: health.link_state(LINK).state == "fallback", 10)
            assert f"SAE certificate {tmp_path / 'missing.pem'}" in health.link_state(LINK).detail
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_driver_etsi014_requests_keep_to_the_limits_the_kme_publishes_in_get_status(tmp_path, pki):
    """ETSI GS QKD 014 clause 6.1 (Table 9): a KME publishes max_key_per_request and its key sizes in Get status.
    A KME serving fewer keys per request than keys_per_request gets requests of its size; one that cannot serve
    the link's key size makes the link fall back with that cause (both ends must keep the configured size)."""
    async def main():
        shared = SharedKeys()
        kme_a, kme_b = scripted(pki, "kme-a", shared), scripted(pki, "kme-b", shared)
        kme_a.status_fields = {"max_key_per_request": 3}                 # keys_per_request is 8
        async with trio.open_nursery() as nursery:
            await nursery.start(kme_a.serve)
            await nursery.start(kme_b.serve)
            alice, bob, health = await relay_pair(nursery, tmp_path, pki, kme_a.url, kme_b.url)
            await wait_for(lambda: len(bob.available()) >= 12)
            assert alice.engine.device.keys_per_request() == 3 and kme_a.numbers[-1] == 3
            assert sum(number > 3 for number in kme_a.numbers) <= 1        # one sent before the first Get status
            assert_no_key_at_one_end_only(alice, bob)
            kme_b.status_fields = {"max_key_size": 128}
            await wait_for(lambda: "serves keys of 64-128 bits (Get status); this link's key_bits is 256"
                           in health["bob"].link_state(LINK).detail, 30)
            assert health["bob"].link_state(LINK).state == "fallback"
            nursery.cancel_scope.cancel()
    trio.run(main)

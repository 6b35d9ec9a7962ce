"""KMS push from two real qkdd daemons on a simulated link (qkdd.link.pair): each end pushes the key both
agreed over the link's channel to its own Infisical-compatible KMS (tests/kms_server.py, real sockets),
the client secret coming from the systemd credential; SIGUSR1 rotates (CURRENT moves to PREVIOUS at both
KMSs alike); a KMS outage is retried until the push goes through; /healthz, /v1/links and /metrics show the consumer;
then the shared fallback policy under each of the simulator's knobs that stop keys (the attack, bob killed -9;
the fiber cut, alice killed -9): the survivor keeps the key past expiry, the end restarted past it falls back at
once, both clear, and with the knob off the ends agree the next key."""
from __future__ import annotations

import base64
import signal
import time

import pytest

from qkdd.link.pair import LinkPair
from tests.daemon_support import wait_until
from tests.fallback_support import ATTACK, FIBER_CUT, Knob
from tests.kms_server import SECRETS, FakeKms, KmsInThread

pytest.importorskip("infisical_sdk", reason="the official Infisical SDK (pip install infisicalsdk)")

FRAME_DETECTIONS = 250_000
PREFIX = "QKD_HANZO_LUX_"
FOLDER = "/inter-cluster"


def kms_config(url: str) -> str:
    return f"""
[kms]
enabled = true
url = "{url}"
client_id = "qkd-agent"
project = "qkd-keys"
environment = "production"

[[kms_push]]
name = "hanzo-lux"
link_id = "sim-1"
folder = "{FOLDER}"
rotation_interval_s = 3600
expiry_s = 86400
activation_delay_s = 0.5
retry_interval_s = 0.2
retry_max_s = 1.0
"""


def test_both_daemons_push_rotate_fall_back_under_attack_and_fiber_cut_and_recover(tmp_path, monkeypatch):
    """Both ends push the key they agreed (the same at both KMSs); SIGUSR1 rotates while alice's KMS fails
    for a while (retried until it goes through; CURRENT moves to PREVIOUS at both); /healthz, /v1/links and
    /metrics show the consumer. Then the shared fallback policy (fall_back_and_recover), twice on the same
    pair: intercept-resend with bob killed, then a fiber cut with alice killed."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "kms-client-secret").write_text(FakeKms().client_secret)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    kmss = {"alice": FakeKms(clock=time.monotonic), "bob": FakeKms(clock=time.monotonic)}
    with KmsInThread(kmss["alice"]) as kms_a, KmsInThread(kmss["bob"]) as kms_b:
        pair = LinkPair(tmp_path / "pair", frame_detections=FRAME_DETECTIONS, admin_tls=True,
                        extra_link={"key_expiry_s": 2.0})
        pair.write()
        for role, server in (("alice", kms_a), ("bob", kms_b)):
            with open(pair.ends[role].config_path, "a") as config:
                config.write(kms_config(server.url).replace("rotation_interval_s = 3600\nexpiry_s = 86400",
                                                            "rotation_interval_s = 30\nexpiry_s = 30"))
        try:
            for role in ("alice", "bob"):
                pair.start(role)
            for role in ("alice", "bob"):
                pair.wait_ready(role)

            def pushed(name: str) -> tuple:
                return tuple(kmss[role].value(PREFIX + name, FOLDER) for role in ("alice", "bob"))

            wait_until(lambda: None not in pushed("GENERATED_AT") and len(set(pushed("KEY_ID"))) == 1, 120,
                       "first push")
            first_key, first_id = pushed("AES256_CURRENT")[0], pushed("KEY_ID")[0]
            assert pushed("AES256_CURRENT") == (first_key, first_key) and len(base64.b64decode(first_key)) == 32
            assert pushed("AES256_PREVIOUS") == (None, None)
            qber = float(pushed("QBER")[0])
            assert 0 <= qber < 0.11 and pushed("QBER")[0] == pushed("QBER")[1]
            # alice's KMS fails for a while: the push is retried (backoff) and goes through with the new key
            kmss["alice"].faults.extend([503, 429, "drop"])
            pair.ends["alice"].process.send_signal(signal.SIGUSR1)
            wait_until(lambda: pushed("KEY_ID")[0] not in (None, first_id) and len(set(pushed("KEY_ID"))) == 1,
                       60, "the rotation at both KMSs")
            assert pushed("AES256_PREVIOUS") == (first_key, first_key)
            assert pushed("AES256_CURRENT")[0] == pushed("AES256_CURRENT")[1] != first_key
            assert not kmss["alice"].faults
            # (each end records the epoch just after its push's last secret: wait for that record)
            def bob_consumer() -> dict:
                return pair.http.get(f"http://{pair.ends['bob'].health}/healthz").json()["consumers"][0]
            wait_until(lambda: bob_consumer()["key_id"] == pushed("KEY_ID")[1], 10, "bob's epoch record")
            consumer = bob_consumer()
            assert (consumer["kind"], consumer["name"], consumer["fallback"]) == ("kms", "hanzo-lux", None)

            def alice_consumers() -> list:
                return pair.http.get(pair.ends["alice"].url("/v1/links")).json()["links"][0]["consumers"]
            wait_until(lambda: alice_consumers()[0]["epoch"] == 2, 10, "alice's epoch record")
            [listed] = alice_consumers()
            assert (listed["kind"], listed["epoch"], listed["key_id"]) == ("kms", 2, pushed("KEY_ID")[0])
            assert listed["installed_age_s"] >= 0 and listed["last_error"] is None
            metrics = pair.http.get(f"http://{pair.ends['alice'].health}/metrics").text
            samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
                       if line.startswith("qkd_kms_key_push")}
            assert samples['qkd_kms_key_push_total{link_id="sim-1",status="success"}'] >= 2
            assert samples['qkd_kms_key_push_total{link_id="sim-1",status="failure"}'] >= 2
            assert samples['qkd_kms_key_push_latency_seconds_count{link_id="sim-1"}'] >= 4
            logs = "".join(pair.ends[role].log_path.read_text() for role in ("alice", "bob"))
            for secret in (first_key, FakeKms().client_secret, *kmss["alice"].tokens, *kmss["bob"].tokens):
                assert secret not in logs
            # the shared fallback policy, once per knob, a different end killed each time (one daemon pair)
            fall_back_and_recover(pair, kmss, ATTACK, dead="bob")
            fall_back_and_recover(pair, kmss, FIBER_CUT, dead="alice")
            logs = "".join(pair.ends[role].log_path.read_text() for role in ("alice", "bob"))
            assert "traceback=" not in logs                 # no task failed along the way (e.g. the frame channel)
        finally:
            pair.stop()


def fall_back_and_recover(pair: LinkPair, kmss: dict, knob: Knob, dead: str) -> None:
    """`knob` (through alice's admin API) halts the link: no fresh key, and the stored ones expire after 2 s.
    `dead` is killed (-9): once the pushed key is 30 s old the survivor keeps it (no one-sided fallback);
    `dead`, restarted past the expiry with the knob still on, applies "clear" at once (deletes its secrets
    before writing any, never pushes the expired key again); the ends meet and the survivor clears too (the
    KMS secrets are gone: services go PQ-only). With the knob off keys flow again and the push resumes at
    both KMSs with the same key."""
    survivor = "alice" if dead == "bob" else "bob"

    def pushed(name: str) -> tuple:
        return tuple(kmss[role].value(PREFIX + name, FOLDER) for role in ("alice", "bob"))

    def record(role: str) -> dict:
        return pair.http.get(f"http://{pair.ends[role].health}/healthz").json()["consumers"][0]

    control = pair.ends["alice"].url(knob.path("sim-1"))
    assert pair.http.post(control, json=knob.on).status_code == 200
    wait_until(lambda: pair.metrics("alice")["state"] == "halted", 30, f"the link to halt ({knob.name})")
    # (frames finished before the halt may still give one key, pushed like any other)
    pair.kill(dead)
    wait_until(lambda: record(survivor)["kept_past_expiry"], 120, f"the key to expire at {survivor}")
    assert record(survivor)["fallback"] is None and None not in pushed("KEY_ID")
    expired = {kmss[dead].value(PREFIX + name, FOLDER) for name in ("AES256_CURRENT", "KEY_ID")}
    mark, log_mark = len(kmss[dead].log), len(pair.ends[dead].log_path.read_text())
    config = pair.ends[dead].config_path
    text = config.read_text()
    if dead == "alice":                        # the simulated fiber runs in alice's daemon: the knob stays on
        config.write_text(knob.on_in_config(text))
    try:
        pair.start(dead)
        pair.wait_ready(dead)
    finally:
        config.write_text(text)
    wait_until(lambda: pushed("AES256_CURRENT") == (None, None) and pushed("KEY_ID") == (None, None),
               120, "the clear fallback at both KMSs")
    # (each end records its fallback just after the secrets are gone)
    wait_until(lambda: record("alice")["fallback"] == record("bob")["fallback"] == "clear", 10,
               "the fallback records")
    assert not record(survivor)["kept_past_expiry"]
    writes = [request for request in kmss[dead].log[mark:]
              if request.method in ("POST", "PATCH", "DELETE") and request.path.startswith(SECRETS)]
    assert [request.method for request in writes[:5]] == ["DELETE"] * 5, [r.method for r in writes]
    assert not expired & {request.body.get("secretValue") for request in writes}
    assert "expired while the daemon was down" in pair.ends[dead].log_path.read_text()[log_mark:]
    wait_until(lambda: pair.metrics("alice")["state"] == "halted", 30, "the link to stay halted")
    assert pushed("KEY_ID") == (None, None)
    assert pair.http.post(control, json=knob.off).status_code == 200
    wait_until(lambda: None not in pushed("KEY_ID") and len(set(pushed("KEY_ID"))) == 1, 120,
               f"the push to resume after the {knob.name}")
    assert pushed("AES256_CURRENT")[0] == pushed("AES256_CURRENT")[1] is not None
    wait_until(lambda: record("alice")["fallback"] is record("bob")["fallback"] is None, 10, "the epoch records")

"""KMS push from two real qkdd daemons on a simulated link (qkdd.link.pair): each end pushes the key both
agreed over the link's channel to its own Infisical-compatible KMS (tests/kms_server.py, real sockets),
the client secret coming from the systemd credential; SIGUSR1 rotates (CURRENT moves to PREVIOUS at both
KMSs alike); a KMS outage is retried until the push goes through; /healthz, /v1/links and /metrics show the consumer;
a daemon killed with -9 and restarted past the key's expiry falls back at once and the ends agree the next key."""
from __future__ import annotations

import base64
import signal
import time

import pytest

from qkdd.link.pair import LinkPair
from tests.daemon_support import wait_until
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


def test_both_daemons_push_rotate_fall_back_under_attack_and_recover(tmp_path, monkeypatch):
    """Both ends push the key they agreed (the same at both KMSs); SIGUSR1 rotates while alice's KMS fails
    for a while (retried until it goes through; CURRENT moves to PREVIOUS at both); /healthz, /v1/links and
    /metrics show the consumer. Then the shared fallback policy: intercept-resend (the simulator's attack knob, through
    alice's admin API) halts the link; stored keys expire after 2 s, the pushed key after expiry_s. Bob is
    killed (-9) meanwhile: alice keeps the key past expiry; bob, restarted past it, applies "clear" at once,
    then alice does too (the KMS secrets are deleted: services go PQ-only); with the attack off keys flow
    again and the push resumes at both KMSs with the same key."""
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
            attack = pair.ends["alice"].url("/v1/links/sim-1/sim/attack")
            assert pair.http.post(attack, json={"attack": "intercept-resend:1"}).json()["attack"].startswith(
                "intercept-resend")
            wait_until(lambda: pair.metrics("alice")["state"] == "halted", 30, "the attacked link to halt")
            # no fresh key (frames finished before the halt may still give one, pushed like any other); bob dies
            # (kill -9): once the last key is 30 s old alice, the survivor, keeps it (no one-sided fallback)
            pair.kill("bob")
            def record(role: str) -> dict:
                return pair.http.get(f"http://{pair.ends[role].health}/healthz").json()["consumers"][0]
            wait_until(lambda: record("alice")["kept_past_expiry"], 120, "the key to expire at alice")
            assert record("alice")["fallback"] is None and pushed("KEY_ID")[0] is not None
            expired = {kmss["bob"].value(PREFIX + name, FOLDER) for name in ("AES256_CURRENT", "KEY_ID")}
            # bob restarts past the expiry: he applies "clear" at once (deletes his secrets before writing any)
            # and never pushes the expired key again; the ends meet and alice clears too
            mark = len(kmss["bob"].log)
            pair.start("bob")
            wait_until(lambda: pushed("AES256_CURRENT") == (None, None) and pushed("KEY_ID") == (None, None),
                       120, "the clear fallback at both KMSs")
            # (each end records its fallback just after the secrets are gone)
            wait_until(lambda: record("alice")["fallback"] == record("bob")["fallback"] == "clear", 10,
                       "the fallback records")
            writes = [request for request in kmss["bob"].log[mark:]
                      if request.method in ("POST", "PATCH", "DELETE") and request.path.startswith(SECRETS)]
            assert [request.method for request in writes[:5]] == ["DELETE"] * 5, [r.method for r in writes]
            assert not expired & {request.body.get("secretValue") for request in writes}
            assert "expired while the daemon was down" in pair.ends["bob"].log_path.read_text()
            assert pair.metrics("alice")["state"] == "halted"
            pair.http.post(attack, json={"attack": "none"})
            wait_until(lambda: None not in pushed("KEY_ID") and len(set(pushed("KEY_ID"))) == 1, 120,
                       "the push to resume after the attack")
            assert pushed("AES256_CURRENT")[0] == pushed("AES256_CURRENT")[1] is not None
        finally:
            pair.stop()


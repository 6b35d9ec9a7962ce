"""KMS push (qkdd.consumers.kms, kms_client): against tests/kms_server.py, an Infisical-compatible KMS whose
routes and shapes are checked by running the official Infisical Python SDK (`infisicalsdk`) against it
over real sockets. Timing (token renewal, backoff) runs under trio's MockClock with the server in process
(httpx's in-process transport: the same routes, no socket latency for the clock to jump over)."""
from __future__ import annotations

import base64
import functools
import logging
import os
import time
import uuid

import pytest
import trio
import trio.testing

from qkdd.config import KmsPushConfig
from qkdd.config_schema import Secret
from qkdd.consumers.kms import KmsSink, secret_prefix
from qkdd.consumers.kms_client import KmsClient, KmsError
from qkdd.consumers.rotation import KeyRotation, RotationState
from qkdd.consumers.wg_epoch import Epoch, consumer_tag
from qkdd.keystore import KeyStore, StoredKey
from qkdd.metrics import Metrics
from tests.kms_server import FakeKms

infisical_sdk = pytest.importorskip("infisical_sdk", reason="the official Infisical SDK (pip install infisicalsdk)")

LINK_ID = "hanzo-lux"
NAME = "hanzo-lux"
FOLDER = "/inter-cluster"
PREFIX = "QKD_HANZO_LUX_"


def stored_key(material: bytes | None = None, *, qber: float | None = 0.023, created_at: float = 1.77e9) -> StoredKey:
    return StoredKey(key_id=str(uuid.uuid4()), link_id=LINK_ID, bits=256, created_at=created_at,
                     expires_at=created_at + 86400, material=material or os.urandom(32), frame_id=1, qber=qber)


def client_for(kms: FakeKms, **kwargs) -> KmsClient:
    return KmsClient("http://kms.test", kms.client_id, Secret(kms.client_secret), project=kms.project_slug,
                     environment="production", transport=kms.transport(), clock=trio.current_time, **kwargs)


def b64(material: bytes) -> str:
    return base64.b64encode(material).decode()


def test_secret_names_follow_the_seed():
    assert secret_prefix("hanzo-lux") == "QKD_HANZO_LUX_"
    assert secret_prefix("model.xfer") == "QKD_MODEL_XFER_"


# ---- the official SDK and qkdd against the same server, over real sockets --------------------------

def test_the_official_sdk_and_qkdd_agree_on_the_kms_routes_and_shapes():
    kms = FakeKms(clock=time.monotonic)
    key = stored_key()

    async def main():
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, kms._connection, 0, host="127.0.0.1"))
            url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"

            def sdk_session():
                from infisical_sdk import InfisicalSDKClient
                client = InfisicalSDKClient(host=url, cache_ttl=None)
                login = client.auth.universal_auth.login(client_id=kms.client_id, client_secret=kms.client_secret)
                assert login.tokenType == "Bearer" and login.expiresIn == 300
                created = client.secrets.create_secret_by_name(
                    secret_name="APP_SETTING", project_slug=kms.project_slug, environment_slug="production",
                    secret_path=FOLDER, secret_value="one")
                assert (created.secretKey, created.secretValue, created.version) == ("APP_SETTING", "one", 1)
                updated = client.secrets.update_secret_by_name(
                    current_secret_name="APP_SETTING", project_id=kms.project_id, environment_slug="production",
                    secret_path=FOLDER, secret_value="two")
                assert (updated.secretValue, updated.version) == ("two", 2)
                return client

            client = await trio.to_thread.run_sync(sdk_session)
            # qkdd pushes a key with its own client (httpx, trio) to the same server ...
            qkdd_client = KmsClient(url, kms.client_id, Secret(kms.client_secret), project=kms.project_slug,
                                    environment="production")
            sink = KmsSink(qkdd_client, name=NAME, folder=FOLDER)
            await sink.install(key, Epoch(1, key.key_id, 0.0))
            await qkdd_client.aclose()

            # ... and the SDK reads it back as a consuming service would
            def sdk_reads():
                current = client.secrets.get_secret_by_name(
                    secret_name=PREFIX + "AES256_CURRENT", project_slug=kms.project_slug,
                    environment_slug="production", secret_path=FOLDER)
                listed = client.secrets.list_secrets(project_id=kms.project_id, environment_slug="production",
                                                     secret_path=FOLDER)
                deleted = client.secrets.delete_secret_by_name(
                    secret_name="APP_SETTING", project_slug=kms.project_slug, environment_slug="production",
                    secret_path=FOLDER)
                return current, {s.secretKey: s.secretValue for s in listed.secrets}, deleted

            current, listed, deleted = await trio.to_thread.run_sync(sdk_reads)
            nursery.cancel_scope.cancel()
        return current, listed, deleted

    current, listed, deleted = trio.run(main)
    assert current.secretValue == b64(key.material) and current.secretKey == PREFIX + "AES256_CURRENT"
    assert listed == {"APP_SETTING": "two", PREFIX + "AES256_CURRENT": b64(key.material),
                      PREFIX + "KEY_ID": key.key_id, PREFIX + "QBER": "0.0230",
                      PREFIX + "GENERATED_AT": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(key.created_at))}
    assert deleted.secretKey == "APP_SETTING" and kms.value("APP_SETTING", FOLDER) is None
    # every qkdd call was authenticated with a token the server issued
    assert all(r.token in kms.tokens for r in kms.log if r.path.startswith("/api/v3/"))


# ---- rotation, idempotence, auth: in process under MockClock ---------------------------------------

def test_current_moves_to_previous_and_a_repeated_push_changes_nothing():
    kms = FakeKms()
    first, second = stored_key(), stored_key(qber=None)

    async def main():
        client = client_for(kms)
        sink = KmsSink(client, name=NAME, folder=FOLDER)
        await sink.install(first, Epoch(1, first.key_id, 0.0))
        assert kms.value(PREFIX + "AES256_PREVIOUS", FOLDER) is None
        await sink.install(second, Epoch(2, second.key_id, 0.0))
        await sink.install(second, Epoch(2, second.key_id, 0.0))         # a retry or a restart: the same key
        await client.aclose()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert kms.value(PREFIX + "AES256_CURRENT", FOLDER) == b64(second.material)
    assert kms.value(PREFIX + "AES256_PREVIOUS", FOLDER) == b64(first.material)
    assert kms.value(PREFIX + "KEY_ID", FOLDER) == second.key_id
    assert kms.value(PREFIX + "QBER", FOLDER) == ""


def test_the_token_is_renewed_before_it_expires_and_replaced_after_its_max_ttl():
    kms = FakeKms(token_ttl_s=60, token_max_ttl_s=150)
    pushed_at = []

    async def main():
        client = client_for(kms)
        sink = KmsSink(client, name=NAME, folder="/")
        for at_s in (0, 30, 50, 100, 150, 300):
            await trio.sleep_until(at_s)
            key = stored_key()
            await sink.install(key, Epoch(len(pushed_at) + 1, key.key_id, 0.0))
            pushed_at.append(trio.current_time())
        await client.aclose()
        return client.logins, client.renewals

    logins, renewals = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # t=0 login (max TTL: until 150); t=30 still fresh; t=50 (10 s left, under a fifth of 60): renewed until
    # 110; t=100: a renewal would outlive the max TTL, so a fresh login (max until 250); t=150 renewed;
    # t=300: expired, a fresh login
    assert (logins, renewals) == (3, 2)
    auth = [r.path.rsplit("/", 1)[-1] for r in kms.log if "/auth/" in r.path]
    assert auth == ["login", "renew", "login", "renew", "login"]
    # every secret call carried the token current at its time (the server refuses any other with 401)
    assert not [r for r in kms.log if r.path.startswith("/api/v3/") and r.token is None]


def test_a_revoked_token_means_one_fresh_login_and_bad_credentials_a_clear_error():
    kms = FakeKms()

    async def main():
        client = client_for(kms)
        sink = KmsSink(client, name=NAME, folder="/")
        key = stored_key()
        await sink.install(key, Epoch(1, key.key_id, 0.0))
        kms.tokens.clear()                                   # revoked at the KMS
        await sink.install(key, Epoch(1, key.key_id, 0.0))
        assert client.logins == 2
        await client.aclose()
        wrong = KmsClient("http://kms.test", kms.client_id, Secret("not-the-secret"), project=kms.project_slug,
                          environment="production", transport=kms.transport(), clock=trio.current_time)
        with pytest.raises(KmsError) as caught:
            await wrong.put_secret("X", "y", "/")
        await wrong.aclose()
        return caught.value

    error = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert error.status == 401 and "login: HTTP 401" in str(error)
    assert "not-the-secret" not in str(error) and "not-the-secret" not in repr(error)


class _Policy:
    name = NAME
    link_id = LINK_ID
    expiry_s = 86400.0
    on_exhausted = "clear"
    activation_delay_s = 0.0
    retry_interval_s = 0.5


def _rotation(tmp_path, sink, metrics) -> KeyRotation:
    store = KeyStore(str(tmp_path / "keys.sqlite3"), os.urandom(32))
    return KeyRotation(_Policy(), kind="kms", tag=consumer_tag("kms", NAME), sink=sink, leader=True, store=store,
                       metrics=metrics.consumer("kms", NAME), state_dir=str(tmp_path), rotation_interval_s=60.0,
                       retry_max_s=30.0, clock=trio.current_time, state=RotationState())


def test_failed_pushes_back_off_exponentially_honour_retry_after_and_never_log_a_secret(tmp_path, caplog):
    kms = FakeKms(faults=[503, 429, "drop", 500, 502, 401])
    metrics = Metrics()
    key = stored_key()

    async def main():
        client = client_for(kms)
        sink = KmsSink(client, name=NAME, folder=FOLDER, metrics=metrics.link(LINK_ID, kms=True))
        rotation = _rotation(tmp_path, sink, metrics)
        rotation._set_target(Epoch(1, key.key_id, 0.0))        # agreed: the installer's target
        started = trio.current_time()
        assert await rotation.install_key(key, Epoch(1, key.key_id, 0.0))
        elapsed_s = trio.current_time() - started
        await client.aclose()
        return elapsed_s

    with caplog.at_level(logging.DEBUG):
        elapsed_s = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # 503: 0.5 s; 429 asks 7 s; then doubling from there, capped at 30: 14 (dropped), 28 (500), 30 (502),
    # 30 (the 401 is the login's: a refused login is retried like any failure); then the push goes through.
    assert elapsed_s == pytest.approx(0.5 + 7 + 14 + 28 + 30 + 30)
    assert kms.value(PREFIX + "AES256_CURRENT", FOLDER) == b64(key.material)
    assert metrics.registry.get_sample_value("qkd_kms_key_push_total", {"link_id": LINK_ID, "status": "failure"}) == 6
    assert metrics.registry.get_sample_value("qkd_kms_key_push_total", {"link_id": LINK_ID, "status": "success"}) == 1
    assert metrics.registry.get_sample_value("qkd_kms_key_push_latency_seconds_count", {"link_id": LINK_ID}) == 7
    assert metrics.registry.get_sample_value("qkd_consumer_key_rotations_total",
                                             {"kind": "kms", "consumer": NAME, "result": "install_failed"}) == 6
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "retrying in 7 s" in text and "HTTP 429" in text and "unreachable" in text
    for secret in (b64(key.material), kms.client_secret, *kms.tokens):
        assert secret not in text


def test_a_newer_key_supersedes_one_still_retrying(tmp_path):
    kms = FakeKms(faults=[503] * 3)
    old, new = stored_key(), stored_key()

    async def main():
        client = client_for(kms)
        sink = KmsSink(client, name=NAME, folder="/")
        rotation = _rotation(tmp_path, sink, Metrics())
        rotation._set_target(Epoch(1, old.key_id, 0.0))
        async with trio.open_nursery() as nursery:
            async def supersede():
                await trio.sleep(1.0)                          # during the second backoff (0.5 s, then 1 s)
                rotation._set_target(Epoch(2, new.key_id, 0.0))
            nursery.start_soon(supersede)
            installed_old = await rotation.install_key(old, Epoch(1, old.key_id, 0.0))
        assert rotation._target == Epoch(2, new.key_id, 0.0)
        installed_new = await rotation.install_key(new, Epoch(2, new.key_id, 0.0))
        await client.aclose()
        return installed_old, installed_new

    installed_old, installed_new = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert (installed_old, installed_new) == (False, True)
    assert kms.value(PREFIX + "AES256_CURRENT") == b64(new.material)
    assert kms.value(PREFIX + "AES256_PREVIOUS") is None              # the old key never reached the KMS


def test_the_fallback_clears_or_randomises_the_secrets():
    kms = FakeKms()
    key = stored_key()

    async def main():
        client = client_for(kms)
        sink = KmsSink(client, name=NAME, folder="/")
        await sink.install(key, Epoch(1, key.key_id, 0.0))
        await sink.fall_back("random")
        randomised = (kms.value(PREFIX + "AES256_CURRENT"), kms.value(PREFIX + "KEY_ID"))
        await sink.fall_back("clear")
        await client.aclose()
        return randomised

    (current, key_id) = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert current not in (None, b64(key.material)) and len(base64.b64decode(current)) == 32
    assert key_id == "fallback-random"
    assert not [name for (_, _, name) in kms.secrets if name.startswith(PREFIX)]


def test_kms_push_config_is_checked():
    from qkdd.config import ConfigError, Config, LinkConfig
    assert KmsPushConfig(name="a", link_id="l").folder == "/"
    link = LinkConfig(link_id="l", role="alice", driver="sim", peer_addr="127.0.0.1:1", peer_key_file="/k",
                      peer_public_key="/p")
    with pytest.raises(ConfigError, match=r"kms_push\[0\].push: needs \[kms\] enabled"):
        Config(links=(link,), kms_push=(KmsPushConfig(name="a", link_id="l"),)).validate("")


# ---- both ends of a link, agreeing over the reservation protocol, each pushing to its own KMS ----------

class _FastPolicy(_Policy):
    expiry_s = 2.5
    activation_delay_s = 0.1
    retry_interval_s = 0.1


def _stored(store: KeyStore, frame_id: int, keys, leader: bool) -> None:
    store.put_pending(LINK_ID, frame_id, keys, expires_at=time.time() + 3600, allocatable=[leader] * len(keys),
                      qber=0.031)
    store.commit_frame(LINK_ID, frame_id)


@pytest.mark.parametrize("pushers", [("alice", "bob"), ("alice",)], ids=["both-push", "alice-only"])
def test_both_ends_push_the_same_keys_fall_back_after_expiry_and_recover(tmp_path, pushers):
    """Real key stores (SQLite), the real reservation service over an in-memory session, a KMS per end
    over real sockets (h11). Three keys rotate through CURRENT/PREVIOUS at both ends alike; with no key
    left, the last one stays until expiry_s, then the "clear" fallback deletes the secrets at both ends;
    fresh keys bring the push back (the fiber-cut-and-repair story without the device). With `push =
    false` at bob ("alice-only") bob agrees on every key (so alice's push goes on) but writes nothing."""
    from tests.reservation_support import memory_session, reservation_service
    from qkdd.consumers.rotation import EpochChannel

    first = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(3)]
    later = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(2)]
    kms_servers = {"alice": FakeKms(clock=time.monotonic), "bob": FakeKms(clock=time.monotonic)}
    ends = {}
    for role in ("alice", "bob"):
        (tmp_path / role).mkdir()
        store = KeyStore(str(tmp_path / role / "keys.sqlite3"), os.urandom(32))
        _stored(store, 1, first, role == "alice")
        ends[role] = store

    async def main():
        async with trio.open_nursery() as nursery:
            urls = {}
            for role, kms in kms_servers.items():
                listeners = await nursery.start(functools.partial(trio.serve_tcp, kms._connection, 0, host="127.0.0.1"))
                urls[role] = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
            rotations, clients = {}, []
            for role in ("alice", "bob"):
                kms = kms_servers[role]
                client = KmsClient(urls[role], kms.client_id, Secret(kms.client_secret), project=kms.project_slug,
                                   environment="production")
                clients.append(client)
                rotations[role] = KeyRotation(
                    _FastPolicy(), kind="kms", tag=consumer_tag("kms", NAME), leader=role == "alice",
                    sink=KmsSink(client, name=NAME, folder=FOLDER, push=role in pushers), store=ends[role],
                    metrics=Metrics().consumer("kms", NAME), state_dir=str(tmp_path / role), rotation_interval_s=0.6,
                    retry_max_s=0.4, what="kms push")
                nursery.start_soon(rotations[role].run)
            a_stream, b_stream = memory_session()
            for role, stream in (("alice", a_stream), ("bob", b_stream)):
                service, serve = reservation_service(LINK_ID)
                EpochChannel([rotations[role]]).attach_to(service)
                nursery.start_soon(serve, stream)

            async def until(predicate, timeout_s=20):
                with trio.fail_after(timeout_s):
                    while not predicate():
                        await trio.sleep(0.05)

            def both(name):
                return tuple(kms_servers[role].value(PREFIX + name, FOLDER) for role in ("alice", "bob"))

            def pushed(value):          # what both() shows when the pushing ends hold `value`
                return tuple(value if role in pushers else None for role in ("alice", "bob"))

            # three epochs: the last key is CURRENT and the one before PREVIOUS, at both ends
            await until(lambda: both("KEY_ID") == pushed(first[2][0]))
            assert both("AES256_CURRENT") == pushed(b64(first[2][1]))
            assert both("AES256_PREVIOUS") == pushed(b64(first[1][1]))
            assert both("QBER") == pushed("0.0310")
            # no key left: the last one stays in use (no fallback yet) ...
            assert rotations["alice"].state.fallback is None
            # ... until it is expiry_s old, then both ends clear their secrets
            await until(lambda: rotations["alice"].state.fallback == "clear" == rotations["bob"].state.fallback)
            await until(lambda: both("AES256_CURRENT") == (None, None) and both("KEY_ID") == (None, None))
            assert rotations["alice"].status()["fallback"] == "clear"
            # the link recovers: fresh keys at both ends, the push resumes
            for role in ("alice", "bob"):
                await trio.to_thread.run_sync(_stored, ends[role], 2, later, role == "alice")
            rotations["alice"].rotate_now()
            await until(lambda: both("KEY_ID") == pushed(later[0][0]))
            assert both("AES256_CURRENT") == pushed(b64(later[0][1]))
            await until(lambda: rotations["bob"].state.epoch.key_id == later[0][0])
            assert rotations["bob"].state.fallback is None and rotations["bob"].status()["installed_age_s"] is not None
            nursery.cancel_scope.cancel()
        for client in clients:
            with trio.CancelScope(shield=True):
                await client.aclose()

    trio.run(main)
    if "bob" not in pushers:                         # bob agreed on every key and never wrote to his KMS
        assert kms_servers["bob"].log == []          # (not even a login)
    # the keys pushed are erased from both stores once superseded (never handed out again)
    for role in ("alice", "bob"):
        states = {key_id: ends[role].state(LINK_ID, key_id).value for key_id, _ in first}
        assert states == {key_id: "delivered" for key_id, _ in first}

"""Health model (states, healthy rule, change notification), link metrics, sd_notify parsing and the
log format -- in process, against the real objects."""
from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from qkdd.health import LINK_ALARMS, LINK_STATES, Health
from qkdd.logs import LogfmtFormatter
from qkdd import sqlite_memory
from qkdd.metrics import Metrics
from qkdd.notify import Notifier
from seed_metrics import ACCEPTED_LINT, SEED_FAMILIES


def serving_health() -> Health:
    health = Health(clock=lambda: 1_700_000_000.0)
    health.register_link("a")
    health.register_link("b")
    health.set_daemon_state("serving")
    return health


def test_configured_and_starting_links_are_healthy():
    health = serving_health()
    health.set_link_state("b", "starting", "device coming up")
    assert health.healthy()
    report = health.report()
    assert report["status"] == "degraded" and report["working_links"] == 0     # healthy, but no link works
    assert [(link["link_id"], link["state"], link["detail"]) for link in report["links"]] == [
        ("a", "configured", LINK_STATES["configured"][1]), ("b", "starting", "device coming up")]
    assert report["links"][0]["since"] == "2023-11-14T22:13:20Z"
    assert health.status_line() == "serving; links: 1 configured, 1 starting"


@pytest.mark.parametrize("state", ["suspended", "halted", "fallback", "failed"])
def test_an_alarmed_link_makes_the_daemon_unhealthy(state):
    health = serving_health()
    health.set_link_state("a", state)
    assert not health.healthy()
    assert health.report()["status"] == "unhealthy"
    health.set_link_state("a", "running")
    assert health.healthy()


def test_daemon_not_serving_is_unhealthy_and_bad_input_is_refused():
    health = Health()
    assert not health.healthy()                        # starting
    health.set_daemon_state("serving")
    assert health.healthy()                            # no links at all is fine
    health.set_daemon_state("stopping")
    assert not health.healthy()
    with pytest.raises(KeyError):
        health.set_link_state("nope", "running")
    health.register_link("x")
    with pytest.raises(ValueError):
        health.set_link_state("x", "exploded")
    with pytest.raises(ValueError):
        health.register_link("x")


def test_watchers_wake_on_change_only():
    health = serving_health()

    async def main():
        seen = health.version
        woke = []

        async def watcher():
            woke.append(await health.wait_changed(seen))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher)
            await trio.testing.wait_all_tasks_blocked()   # the watcher waits
            health.set_link_state("a", "configured")     # same state and detail: no change
            await trio.testing.wait_all_tasks_blocked()
            assert woke == []
            health.set_link_state("a", "running")
        assert woke == [seen + 1]

    trio.run(main)


def test_link_metrics_report_under_the_seed_names():
    metrics = Metrics()
    link = metrics.link("hk-lk-1", "bb84", kms=True)
    link.keys_stored(1, 256)
    link.keys_stored(30_000, 256)              # a frame's keys in one call
    link.channel(qber=0.023, loss_db=10.5)
    link.qber_alarm("critical")
    link.kms_push(ok=False, latency_s=0.2)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics.exposition().decode())
               for s in family.samples if s.name.startswith("qkd_")}
    assert samples[("qkd_keys_generated_total", (("link_id", "hk-lk-1"), ("protocol", "bb84")))] == 30_001
    assert samples[("qkd_key_generated_bytes_total", (("link_id", "hk-lk-1"),))] == 30_001 * 32
    assert samples[("qkd_key_bits_generated_total", (("link_id", "hk-lk-1"),))] == 30_001 * 256
    assert samples[("qkd_qber", (("link_id", "hk-lk-1"),))] == 0.023
    assert samples[("qkd_qber_threshold_exceeded_total", (("link_id", "hk-lk-1"), ("severity", "critical")))] == 1
    assert samples[("qkd_qber_threshold_exceeded_total", (("link_id", "hk-lk-1"), ("severity", "warning")))] == 0
    assert samples[("qkd_kms_key_push_total", (("link_id", "hk-lk-1"), ("status", "failure")))] == 1
    assert samples[("qkd_kms_key_push_latency_seconds_count", (("link_id", "hk-lk-1"),))] == 1
    assert ("qkd_photon_rate_hz", (("link_id", "hk-lk-1"),)) not in samples      # never measured
    with pytest.raises(ValueError):
        link.qber_alarm("mild")


def test_every_family_with_samples_passes_promtool():
    metrics = Metrics()
    link = metrics.link("sim-1", "cvqkd", kms=True)
    link.keys_stored(3, 4096)
    link.rates(raw_bps=1.2e6, secure_bps=2.5e5)
    link.channel(qber=0.031, loss_db=10.0, photon_rate_hz=4.0e5, visibility=0.97)
    link.qber_alarm("warning")
    link.halted()
    link.device(temperature_celsius=-40.5, uptime_s=86400)
    link.kms_push(ok=True, latency_s=0.02)
    link.store_fill(key_bits=2048, store_bytes=1 << 20, ratio=0.25)
    link.auth_consumed(384)
    link.auth_pool(65536)
    link.chsh(2.74)
    tunnel = metrics.tunnel("site-a-b", "wg0", "HTJCFVji7BIGv9iSV/M7VuLj7iiBuVTXa/LbKmfCKFA=")
    tunnel.rotation("success")
    tunnel.psk_age(12.5)
    tunnel.handshake_age(3.0)
    consumer = metrics.consumer("kms", "hanzo-lux")
    consumer.rotation("success")
    consumer.psk_age(4.0)
    kme = metrics.kme_link("sim-1")
    kme.keys_handed("master", 2)
    kme.unavailable("no_key")
    kme.reservation_confirmed(0.004)
    apps = metrics.app_link("sim-1")          # ETSI 004 streams and SKIP keys
    apps.streams(2)
    apps.chunk_delivered(32, 0.012)
    apps.refused("timeout")
    apps.expired(1)
    apps.skip_key("new", 32, 0.02)
    apps.skip_key("by_id", 32)
    metrics.skip_server()
    metrics.skip_refused(503)
    text = metrics.exposition().decode()
    families = {family.name for family in text_string_to_metric_families(text)}
    wireguard_families = {"qkd_wireguard_psk_rotations", "qkd_wireguard_psk_age_seconds",
                          "qkd_wireguard_handshake_age_seconds"}      # qkdd's own, beyond the seed
    wireguard_families |= {"qkd_consumer_key_rotations", "qkd_consumer_key_age_seconds"}   # KMS push, IKEv2 PPK
    kme_families = {"qkd_etsi014_keys", "qkd_etsi014_unavailable", "qkd_etsi014_reservation_seconds"}
    keystore_families = {"qkd_keystore_fill_ratio", "qkd_keystore_key_bytes", "qkd_keystore_bytes"}
    if sqlite_memory.available():                                      # read from SQLite at each scrape
        keystore_families.add("qkd_sqlite_memory_bytes")
    auth_families = {"qkd_auth_key_bits_consumed", "qkd_auth_pool_bits"}
    app_families = {"qkd_etsi004_streams", "qkd_etsi004_chunks", "qkd_etsi004_key_bytes", "qkd_etsi004_refusals",
                    "qkd_etsi004_expired_chunks", "qkd_etsi004_get_key_wait_seconds", "qkd_skip_keys",
                    "qkd_skip_key_bytes", "qkd_skip_key_wait_seconds", "qkd_skip_refusals"}
    protocol_families = {"qkd_chsh_value"}                             # E91 links
    assert ({name for name in families if name.startswith("qkd_")}
            == set(SEED_FAMILIES) | wireguard_families | kme_families | keystore_families | auth_families
            | app_families | protocol_families)
    if shutil.which("promtool") is None:
        pytest.fail("promtool missing: scripts/bootstrap-system.sh installs the Debian package prometheus")
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                           timeout=30)
    findings = {line.strip() for line in (check.stdout + check.stderr).splitlines() if line.strip()}
    assert check.returncode in (0, 3) and findings <= ACCEPTED_LINT, findings


def test_notifier_sends_datagrams_and_honours_watchdog_pid(monkeypatch):
    def notifier_for(**variables: str) -> Notifier:
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            monkeypatch.delenv(name, raising=False)
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        return Notifier()

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "n")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
            receiver.bind(path)
            receiver.settimeout(2)
            notifier = notifier_for(NOTIFY_SOCKET=path, WATCHDOG_USEC="3000000", WATCHDOG_PID=str(os.getpid()))
            assert notifier.watchdog_interval_s == 1.5
            assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ   # not inherited
            notifier.ready("serving\nnow")
            assert receiver.recv(512).decode() == f"READY=1\nSTATUS=serving now\nMAINPID={os.getpid()}"
            notifier.watchdog()
            assert receiver.recv(512).decode() == "WATCHDOG=1"
            notifier.stopping()
            assert receiver.recv(512).decode() == "STOPPING=1\nSTATUS=stopping"
        assert notifier_for(NOTIFY_SOCKET=path, WATCHDOG_USEC="3000000", WATCHDOG_PID="1").watchdog_interval_s is None
    assert notifier_for(WATCHDOG_USEC="junk").watchdog_interval_s is None
    silent = notifier_for()
    assert not silent.enabled
    silent.ready("x")                                  # no socket: nothing happens, nothing raises


def test_log_lines_are_single_line_logfmt():
    record = logging.LogRecord("qkdd.test", logging.WARNING, __file__, 1, 'odd "value"\nnext', None, None)
    record.link_id = "sim-1"
    record.duration_ms = 1.23456789
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = LogfmtFormatter(journal=False).format(record)
    assert "\n" not in line
    assert ' level=warning logger=qkdd.test msg="odd \\"value\\"\\nnext" link_id=sim-1 duration_ms=1.23457 ' \
           'exc="ValueError: boom" traceback=' in line
    assert LogfmtFormatter(journal=True).format(record).startswith("<4>level=warning ")


def test_an_exception_group_logs_the_exceptions_it_holds():
    """A handler's failure inside a trio nursery arrives as an ExceptionGroup: the line names the member's type
    and message and where it was raised, still on one line."""
    record = logging.LogRecord("qkdd.test", logging.ERROR, __file__, 1, "handler failed", None, None)

    def inner():
        raise TypeError("unsupported format string passed to NoneType.__format__")
    try:
        try:
            inner()
        except TypeError as exc:
            raise ExceptionGroup("Exceptions from Trio nursery", [exc]) from None
    except ExceptionGroup:
        record.exc_info = sys.exc_info()
    line = LogfmtFormatter(journal=False).format(record)
    assert "\n" not in line
    assert 'exc="ExceptionGroup: Exceptions from Trio nursery (1 sub-exception)"' in line
    assert "TypeError: unsupported format string passed to NoneType.__format__" in line
    assert "in inner" in line


def test_log_values_cannot_carry_control_characters():
    record = logging.LogRecord("qkdd.test", logging.INFO, __file__, 1, "request", None, None)
    record.path = "/x\x1b[31mred\x00\x85\u2028end\\"
    line = LogfmtFormatter(journal=True).format(record)
    assert line == '<6>level=info logger=qkdd.test msg=request path="/x\\x1b[31mred\\x00\\x85\\u2028end\\\\"'
    assert line.isprintable()


def test_an_alarm_stands_in_for_a_healthy_state_and_every_alarm_is_listed():
    health = serving_health()
    health.set_link_state("a", "running", "generating keys")
    health.set_link_alarm("a", "stalled", "12 bit/s below the floor")
    assert health.link_state("a").state == "stalled" and not health.healthy()
    health.set_link_alarm("a", "store_full")                 # after stalled in LINK_ALARMS: the unhealthy first
    report = health.report()["links"][0]
    assert (report["state"], report["healthy"], report["alarms"]) == ("stalled", False, ["stalled", "store_full"])
    assert report["detail"] == "12 bit/s below the floor"
    assert health.status_line() == "serving; links: 1 configured, 1 stalled" and not health.healthy()
    health.clear_link_alarm("a", "stalled")
    report = health.report()["links"][0]
    assert (report["state"], report["healthy"], report["detail"]) == ("store_full", True, LINK_ALARMS["store_full"][1])
    assert health.healthy()
    health.set_link_state("a", "failed", "peer session lost")   # an unhealthy engine state says more
    assert health.link_state("a").state == "failed" and health.report()["links"][0]["alarms"] == ["store_full"]
    health.clear_link_alarm("a", "store_full")
    health.clear_link_alarm("a", "store_full")                  # not raised: nothing happens
    health.set_link_state("a", "running")
    assert health.link_state("a").state == "running" and health.healthy()
    with pytest.raises(ValueError):
        health.set_link_alarm("a", "on_fire")
    with pytest.raises(KeyError):
        health.set_link_alarm("nope", "stalled")


def test_a_new_detail_is_kept_but_is_not_a_change():
    """The engine repeats "running" with the last frame's QBER after every frame: /healthz shows the new
    detail, `since` stays at the change, and watchers are not woken."""
    now = [1_700_000_000.0]
    health = Health(clock=lambda: now[0])
    health.register_link("a")
    health.set_link_state("a", "running", "generating keys, QBER 0.0210")
    version = health.version
    for second in range(1, 50):
        now[0] += 1
        health.set_link_state("a", "running", f"generating keys, QBER 0.02{second:02d}")
        if second == 20:
            health.set_link_alarm("a", "store_full", f"holds {second} bits")
    assert health.version == version + 1                          # only the alarm raised at second 20
    record = health.link_state("a")
    assert record.detail == "holds 20 bits" and record.since_s == 1_700_000_020.0
    health.clear_link_alarm("a", "store_full")
    assert health.link_state("a").detail == "generating keys, QBER 0.0249"
    assert health.link_state("a").since_s == 1_700_000_000.0


def test_state_changed_is_logged_and_sent_to_systemd_only_on_a_change(monkeypatch, caplog):
    """Ten seconds of an engine repeating its state with a new QBER a hundred times a second write no line;
    each real change writes one naming it, and one STATUS= datagram."""
    import types

    import trio.testing

    from qkdd.daemon import _report_status_changes

    caplog.set_level(logging.INFO, "qkdd.daemon")
    health = serving_health()
    health.set_link_state("a", "running", "generating keys")
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "n")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
            receiver.bind(path)
            receiver.setblocking(False)
            monkeypatch.setenv("NOTIFY_SOCKET", path)
            notifier = Notifier()

            async def main():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_report_status_changes, types.SimpleNamespace(health=health), notifier)
                    for tick in range(1000):
                        health.set_link_state("a", "running", f"generating keys, QBER {0.02 + tick * 1e-6:.6f}")
                        await trio.sleep(0.01)
                    health.set_link_alarm("a", "store_full", "holds 9000 key bits of 8192")
                    await trio.sleep(1)
                    health.set_link_alarm("a", "stalled")          # unhealthy: reported before store_full
                    health.set_link_state("a", "degraded")         # behind the alarm: reported state unchanged
                    await trio.sleep(1)
                    health.clear_link_alarm("a", "store_full")     # likewise
                    await trio.sleep(1)
                    nursery.cancel_scope.cancel()

            trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
            datagrams = []
            while True:
                try:
                    datagrams.append(receiver.recv(512).decode())
                except BlockingIOError:
                    break
    lines = [r for r in caplog.records if r.name == "qkdd.daemon" and r.getMessage() == "state changed"]
    assert [r.changes for r in lines] == ["a: running -> store_full", "a: store_full -> stalled"]
    assert datagrams == ["STATUS=serving; links: 1 configured, 1 store_full",
                         "STATUS=serving; links: 1 configured, 1 stalled"]


def test_status_is_degraded_with_no_working_link_and_ok_with_one():
    health = serving_health()
    assert health.report()["status"] == "degraded"                   # both only configured
    health.set_link_state("a", "degraded", "QBER 4 %")                # the QBER band: still generating
    assert (health.report()["status"], health.report()["working_links"]) == ("ok", 1)
    health.set_link_alarm("a", "store_full")                         # healthy, but not generating
    assert health.healthy() and health.report()["status"] == "degraded"
    health.clear_link_alarm("a", "store_full")
    health.set_link_state("b", "running")
    assert health.report()["working_links"] == 2
    health.set_link_state("b", "fallback")                           # the gate's DEGRADED: unhealthy
    assert not health.healthy() and health.report()["status"] == "unhealthy"
    no_links = Health()
    no_links.set_daemon_state("serving")
    assert no_links.healthy() and no_links.report()["status"] == "degraded"


def test_a_link_without_peer_identities_says_so_in_healthz(tmp_path):
    from qkdd.app import App
    from qkdd.config import load_config
    config_file = tmp_path / "qkdd.toml"
    config_file.write_text(f'[daemon]\nstate_dir = "{tmp_path}"\n\n[[links]]\nlink_id = "l1"\nrole = "alice"\n'
                           'driver = "sim"\npeer_listen = "127.0.0.1:0"\n')
    app = App.create(load_config(str(config_file)))
    (link,) = app.health.report()["links"]
    assert link["state"] == "configured"
    assert "not started: set peer_key_file and peer_public_key" in link["detail"]
    assert "no link engine runs it yet" not in link["detail"]

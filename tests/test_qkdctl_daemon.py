"""`qkdctl status | links | keys | health | watch` against two real daemons on a simulated link (API over
mTLS with the admin client certificate, health port plain): JSON when piped, tables and live redraws on a
real pseudo-terminal, exit status 1 once an attack makes the link unhealthy, 3 when nothing answers."""
from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time

import httpx
import pytest

from qkdd.link.pair import ADMIN_CLIENT, LINK_ID, LinkPair, free_port
from tests.seed_metrics import ACCEPTED_LINT
from qkdd.operator.cli import CLEAR_SCREEN

FRAME_DETECTIONS = 250_000


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    link_pair = LinkPair(tmp_path_factory.mktemp("ctl"), frame_detections=FRAME_DETECTIONS, admin_tls=True)
    with link_pair:
        yield link_pair


def target(pair, role="alice") -> list[str]:
    end, admin = pair.ends[role], pair.pki.saes[ADMIN_CLIENT]
    return ["--api", f"https://{end.api}", "--health", f"http://{end.health}", "--ca", str(pair.pki.ca_cert_file),
            "--cert", str(admin.cert_file), "--key", str(admin.key_file)]


def qkdctl(*args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QKDCTL_")}
    return subprocess.run([sys.executable, "-m", "qkdd.ctl", *args], capture_output=True, text=True, env=env,
                          timeout=timeout_s)


def qkdctl_on_tty(*args: str, timeout_s: float = 30.0) -> tuple[int, str]:
    """Run qkdctl with its stdout on a real pseudo-terminal; return its exit status and everything it drew."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "qkdd.ctl", *args], stdout=terminal, stderr=terminal,
                               stdin=subprocess.DEVNULL)
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            chunk = os.read(controller, 65536)
        except OSError:                  # EIO: the terminal's other side closed (the process ended)
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    return process.wait(timeout=10), output.decode(errors="replace")


def wait_for_keys(pair, role="alice", at_least=1, timeout_s=90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if pair.metrics(role)["keys_stored"].get("available", 0) >= at_least:
                return
        except (httpx.HTTPError, KeyError):
            pass
        time.sleep(0.3)
    raise AssertionError("no keys stored in time")


def test_version():
    result = qkdctl("--version")
    assert result.returncode == 0 and result.stdout.startswith("qkdctl (qkdd) ")


def test_status_links_and_keys_as_json_when_piped(pair):
    wait_for_keys(pair)
    status = qkdctl("status", *target(pair))
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert document["status"] == "ok" and document["http_status"] == 200
    assert document["daemon"]["state"] == "serving" and document["api_error"] is None
    (link,) = document["links"]
    assert link["link_id"] == LINK_ID and link["role"] == "alice" and link["protocol"] == "bb84"
    assert link["state"] in ("running", "degraded") and link["healthy"] is True
    assert 0 < link["qber"] < 0.05 and link["qber_band"] in ("nominal", "degraded")
    assert link["secure_key_rate_bps"] > 0 and link["keys_available"] >= 1

    keys = json.loads(qkdctl("keys", *target(pair, "bob")).stdout)
    (bob,) = keys["links"]
    assert bob["role"] == "bob" and bob["keys_available"] >= 0 and bob["key_bits_generated"] >= 0
    links = json.loads(qkdctl("links", *target(pair)).stdout)
    assert [row["link_id"] for row in links["links"]] == [LINK_ID]
    assert links["links"][0]["driver"] == "sim"


def test_link_metrics_count_the_simulated_devices_cpu_apart_from_the_frame_stages(pair):
    wait_for_keys(pair)
    for role in ("alice", "bob"):
        cpu = pair.metrics(role)["cpu_s"]
        process_s = pair.process_figures(role)["cpu_s_process"]
        assert cpu["device"] > 0, (role, cpu)           # (to the microsecond: Bob's check of a frame takes < 1 ms)
        assert {"sifting", "estimation", "reconciliation", "amplification", "store"} <= set(cpu), (role, cpu)
        assert sum(cpu.values()) <= process_s, (role, cpu, process_s)      # nothing counted twice


def test_tables_on_a_terminal(pair):
    wait_for_keys(pair)
    status, drawn = qkdctl_on_tty("status", *target(pair))
    assert status == 0, drawn
    lines = drawn.splitlines()
    assert lines[0].startswith("qkdd serving, ok (HTTP 200)")
    header = next(line for line in lines if line.startswith("LINK"))
    assert header.split() == ["LINK", "STATE", "QBER", "BAND", "SECURE", "SIFTED", "STOCK", "FILL", "CONSUMERS"]
    row = next(line for line in lines if line.startswith(LINK_ID)).split()
    assert row[1] in ("running", "degraded") and row[3] == "%" and row[4] in ("nominal", "degraded")
    status, drawn = qkdctl_on_tty("keys", *target(pair))
    assert status == 0 and "AVAILABLE" in drawn and LINK_ID in drawn


def test_watch_redraws_on_a_terminal_and_streams_json_otherwise(pair):
    status, drawn = qkdctl_on_tty("watch", "--count", "3", "--interval", "0.3", *target(pair))
    assert status == 0, drawn
    frames = drawn.split(CLEAR_SCREEN)[1:]
    assert len(frames) == 3 and all("LINK" in frame and LINK_ID in frame for frame in frames)
    piped = qkdctl("watch", "--count", "2", "--interval", "0.3", *target(pair))
    assert piped.returncode == 0, piped.stderr
    documents = [json.loads(line) for line in piped.stdout.splitlines()]
    assert len(documents) == 2 and all(d["links"][0]["link_id"] == LINK_ID for d in documents)
    assert documents[0]["time"] <= documents[1]["time"]


def test_nothing_listening_is_exit_status_3():
    port = free_port()
    for command in ("status", "links", "keys", "health", "watch"):
        result = qkdctl(command, "--api", f"http://127.0.0.1:{port}", "--health", f"http://127.0.0.1:{port}",
                        *(["--count", "1"] if command == "watch" else []))
        if command == "watch":      # watch keeps going through a restart: it reports the error and carries on
            assert result.returncode == 0 and "Connection refused" in json.loads(result.stdout)["error"]
        else:
            assert result.returncode == 3 and "Connection refused" in result.stderr, (command, result.stderr)


def test_links_plot_of_a_running_link(pair, tmp_path):
    from PIL import Image                          # comes with matplotlib (the plot extra)
    wait_for_keys(pair, at_least=200)
    png = tmp_path / "links.png"
    result = qkdctl("links", "--plot", str(png), *target(pair))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["links"][0]["link_id"] == LINK_ID
    frames = int(result.stderr.split("(")[1].split()[0])
    assert frames >= 2 and "of 1 link(s)" in result.stderr
    assert png.stat().st_size > 20_000
    with Image.open(png) as image:
        image.load()
        assert image.format == "PNG" and image.size == (900, 600)
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 20


def test_metrics_of_a_running_link_pass_promtool(pair):
    """`promtool check metrics` on a running daemon's /metrics (gauges measured, link state, KME families): no
    finding but the accepted one, the seed's qkd_key_bits_generated_total in bits (tests/seed_metrics.py)."""
    import shutil
    wait_for_keys(pair)
    text = httpx.get(f"http://{pair.ends['alice'].health}/metrics", timeout=10).text
    assert "qkd_key_generated_bytes_total{" in text and "qkd_key_bits_generated_total{" in text
    assert 'qkd_link_state{link_id="sim-1",state="running"} 1.0' in text
    assert "qkd_qber{" in text and "qkd_keystore_key_bytes{" in text
    if shutil.which("promtool") is None:
        pytest.fail("promtool missing: scripts/bootstrap-system.sh installs the Debian package prometheus")
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    findings = {line.strip() for line in (check.stdout + check.stderr).splitlines() if line.strip()}
    assert check.returncode in (0, 3) and findings <= ACCEPTED_LINT, findings


def test_health_exit_status_follows_healthz_through_an_attack(pair):
    """Last in this module: the intercept-resend attack leaves the shared pair's link halted."""
    healthy = qkdctl("health", *target(pair))
    assert healthy.returncode == 0 and json.loads(healthy.stdout)["status"] == "ok"
    attack = pair.ends["alice"].url(f"/v1/links/{LINK_ID}/sim/attack")
    assert pair.http.post(attack, json={"attack": "intercept-resend:1"}).status_code == 200
    deadline = time.monotonic() + 60
    while True:
        result = qkdctl("health", *target(pair))
        if result.returncode == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result.returncode == 1, result.stdout
    document = json.loads(result.stdout)
    assert document["http_status"] == 503 and document["links"][0]["healthy"] is False
    assert document["links"][0]["state"] in ("suspended", "halted")

"""WireGuard PSK rotation under the packaged unit's sandbox, with systemd as PID 1: the packaged units
systemd/qkdd-wireguard-go@.socket and .service run wireguard-go with its UAPI socket made by systemd (group
qkdd, 0660), and `wg set IF peer PUB preshared-key /dev/stdin` - the command qkdd's WgTool runs - works as
the qkdd user under every sandboxing line of systemd/qkdd.service (User=, CapabilityBoundingSet=,
RestrictAddressFamilies=, ProtectSystem=strict, SystemCallFilter=, ...), and so does kernel WireGuard
(netlink, CAP_NET_ADMIN). The control: wireguard-go started plainly (its own socket, root-only) refuses the
same command with "Permission denied".

This machine's PID 1 is not systemd, so the test boots a Debian 12 root (the packaging tests' cached
debootstrap root, tests/test_packaging.py) with systemd-nspawn in a private network namespace; the probe
service is qkdd.service itself with only its start-up lines (Type=notify, ExecStart=, watchdog, restart)
replaced by a oneshot running `wg`. wireguard-go and wg are the host's (bind-mounted; both need only libc).
The qkdd daemon itself is not installed in that root (test_packaging.py runs the installed .deb)."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_packaging import (CACHE_DIR, ROOT_EXTRA_PACKAGES, SUITE, _apt_mirror, _build_root_tarball,
                                  _chroot_argv, _kill_container, _parent_pid, _run)

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "qkdd.service"
WG_GO_UNITS = [REPO / "systemd" / "qkdd-wireguard-go@.socket", REPO / "systemd" / "qkdd-wireguard-go@.service"]
# qkdd.service lines that make it a long-running notify daemon; everything else (the sandbox) is kept.
START_UP_KEYS = {"Type", "NotifyAccess", "ExecStart", "WatchdogSec", "TimeoutStartSec", "Restart", "RestartSec",
                 "RestartPreventExitStatus"}
PEER_PUBLIC_KEY = base64.b64encode(hashlib.sha256(b"qkdd test peer").digest()).decode()
TOOLS = ("systemd-nspawn", "nsenter", "tar", "unshare", "chroot", "ip", "wireguard-go", "wg")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, network namespaces)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing tools {missing}: install scripts/system-packages.txt (scripts/bootstrap-system.sh)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun (wireguard-go needs TUN)"
    return None


pytestmark = [pytest.mark.root, pytest.mark.skipif(_missing() is not None, reason=_missing() or "")]


def _root_tarball() -> Path:
    """The cached Debian 12 minbase + systemd root of the packaging tests (any of its versions: all hold
    systemd), built with debootstrap when there is none."""
    cached = sorted(CACHE_DIR.glob(f"{SUITE}-minbase-*.tar"), key=lambda path: path.stat().st_mtime)
    if cached:
        return cached[-1]
    if shutil.which("debootstrap") is None:
        pytest.skip("no cached Debian root and no debootstrap: install scripts/system-packages.txt")
    mirror = _apt_mirror()
    version = _run(["dpkg-query", "-W", "-f=${Version}", "debootstrap"], timeout_s=30).stdout
    key = hashlib.sha256(json.dumps([SUITE, "minbase", mirror, version, ROOT_EXTRA_PACKAGES, []]).encode())
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tarball = CACHE_DIR / f"{SUITE}-minbase-{key.hexdigest()[:16]}.tar"
    _build_root_tarball(tarball, mirror, [])
    return tarball


def probe_unit(interface: str, psk_b64: str) -> str:
    """qkdd.service with its start-up lines replaced: a oneshot that sets the peer's PSK through a pipe
    and reads the handshake times, as WgTool does."""
    kept = []
    for line in UNIT.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in START_UP_KEYS:
            continue
        kept.append(line)
        if line.strip() == "[Service]":
            kept += ["Type=oneshot", f"Environment=PSK={psk_b64}",
                     f"ExecStart=/bin/sh -c 'echo \"$PSK\" | /usr/bin/wg set {interface} peer {PEER_PUBLIC_KEY} "
                     f"preshared-key /dev/stdin && /usr/bin/wg show {interface} latest-handshakes'"]
    text = "\n".join(kept) + "\n"
    assert "ProtectSystem=strict" in text and "CapabilityBoundingSet=CAP_NET_ADMIN" in text and "User=qkdd" in text
    return text


@pytest.fixture(scope="module")
def booted(tmp_path_factory):
    """A Debian 12 root booted with systemd (PID 1 of its own namespace, private network), the qkdd user
    and the packaged wireguard-go units in it; yields a function running a command in it."""
    tarball = _root_tarball()
    root = tmp_path_factory.mktemp("wg-unit") / "root"
    root.mkdir()
    _run(["tar", "-C", str(root), "-xf", str(tarball)], timeout_s=300)
    _run(_chroot_argv(root, "groupadd", "--system", "qkdd"), timeout_s=60)
    _run(_chroot_argv(root, "useradd", "--system", "--gid", "qkdd", "--home-dir", "/var/lib/qkdd", "--no-create-home",
                      "--shell", "/usr/sbin/nologin", "qkdd"), timeout_s=60)
    (root / "etc/qkdd/credentials").mkdir(parents=True, mode=0o700)    # what the package ships
    for unit in WG_GO_UNITS:
        shutil.copy(unit, root / "lib/systemd/system" / unit.name)
    log = open(root.parent / "console.log", "w+")
    container = subprocess.Popen(["systemd-nspawn", "--quiet", "--boot", "--keep-unit", "--register=no",
                                  "--private-network", "--console=pipe", "--bind-ro=/usr/bin/wireguard-go",
                                  "--bind-ro=/usr/bin/wg", "-D", str(root)],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        init_pid = _container_init(container)

        def inside(*args: str, check: bool = True, mount: bool = True) -> subprocess.CompletedProcess:
            spaces = ["--mount", "--pid", "--net"] if mount else ["--net"]   # (without --mount: the host's tools)
            result = subprocess.run(["nsenter", f"--target={init_pid}", *spaces, "--", *args], capture_output=True,
                                    text=True, timeout=60)
            if check and result.returncode != 0:
                raise AssertionError(f"{' '.join(args)} exited {result.returncode}: {result.stderr[-1500:]}")
            return result

        deadline = time.monotonic() + 120
        while inside("systemctl", "is-system-running", check=False).stdout.strip() not in ("running", "degraded"):
            assert time.monotonic() < deadline and container.poll() is None, "the container did not boot"
            time.sleep(0.3)
        yield inside
    except BaseException:
        log.seek(0)
        print("--- container console (tail)\n" + log.read()[-4000:])
        raise
    finally:
        if container.poll() is None:
            _kill_container(container)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _container_init(container: subprocess.Popen) -> int:
    """The host PID of the container's systemd (a child of systemd-nspawn)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert container.poll() is None, "systemd-nspawn exited"
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and _parent_pid(int(entry.name)) == container.pid:
                    return int(entry.name)
            except (OSError, AttributeError):
                continue
        time.sleep(0.1)
    raise AssertionError("no init process in the container")


def run_probe(inside, name: str, interface: str, psk_b64: str, *, expect: str) -> dict[str, str]:
    """Start the probe (a oneshot: returns when `wg` is done); its Result and its journal, once the journal
    holds `expect` (journald may take a moment to store the output of a process that has exited)."""
    path = f"/run/systemd/system/{name}.service"
    inside("sh", "-c", f"printf '%s' \"$0\" > {path}", probe_unit(interface, psk_b64))
    inside("systemctl", "daemon-reload")
    inside("systemctl", "start", f"{name}.service", check=False)
    lines = inside("systemctl", "show", f"{name}.service", "--property=Result", "--property=ExecMainStatus").stdout
    shown = dict(line.split("=", 1) for line in lines.splitlines() if "=" in line)
    deadline = time.monotonic() + 20
    while True:
        shown["journal"] = inside("journalctl", "--no-pager", "-o", "cat", "-u", f"{name}.service").stdout
        if expect in shown["journal"] or time.monotonic() > deadline:
            return shown
        time.sleep(0.2)


def preshared_key(inside, interface: str) -> str | None:
    for line in inside("wg", "show", interface, "preshared-keys").stdout.splitlines():
        peer, _, psk = line.partition("\t")
        if peer == PEER_PUBLIC_KEY:
            return psk.strip()
    return None


def test_the_sandboxed_unit_sets_psks_on_wireguard_go_through_the_packaged_socket(booted):
    inside = booted
    inside("systemctl", "start", "qkdd-wireguard-go@wgq0.service")
    deadline = time.monotonic() + 30
    while inside("ip", "link", "show", "wgq0", check=False, mount=False).returncode != 0:
        assert time.monotonic() < deadline, "wireguard-go made no interface wgq0"
        time.sleep(0.1)
    socket_mode = inside("stat", "-c", "%A %U %G", "/run/wireguard/wgq0.sock").stdout.split()
    assert socket_mode == ["srw-rw----", "root", "qkdd"], socket_mode

    psk = base64.b64encode(os.urandom(32)).decode()
    shown = run_probe(inside, "qkdd-probe-go", "wgq0", psk, expect=PEER_PUBLIC_KEY)
    assert (shown["Result"], shown["ExecMainStatus"]) == ("success", "0"), shown
    assert preshared_key(inside, "wgq0") == psk
    assert PEER_PUBLIC_KEY in shown["journal"] and psk not in shown["journal"]   # handshakes read, key not echoed
    assert inside("systemctl", "is-active", "qkdd-wireguard-go@wgq0.service").stdout.strip() == "active"

    # a restart of wireguard-go brings a fresh socket with the same access (the socket is PartOf= the service)
    inside("systemctl", "restart", "qkdd-wireguard-go@wgq0.service")
    deadline = time.monotonic() + 30
    while inside("ip", "link", "show", "wgq0", check=False, mount=False).returncode != 0:
        assert time.monotonic() < deadline, "wireguard-go made no interface wgq0 after its restart"
        time.sleep(0.1)
    again = base64.b64encode(os.urandom(32)).decode()
    shown = run_probe(inside, "qkdd-probe-go-again", "wgq0", again, expect=PEER_PUBLIC_KEY)
    assert (shown["Result"], preshared_key(inside, "wgq0")) == ("success", again), shown

    # the control: wireguard-go started plainly makes its own root-only socket, which the unit cannot open
    inside("systemd-run", "--unit=plain-wireguard-go", "/usr/bin/wireguard-go", "--foreground", "wgp0")
    deadline = time.monotonic() + 30
    while inside("test", "-S", "/run/wireguard/wgp0.sock", check=False).returncode != 0:
        assert time.monotonic() < deadline, "plain wireguard-go made no socket"
        time.sleep(0.1)
    shown = run_probe(inside, "qkdd-probe-plain", "wgp0", base64.b64encode(os.urandom(32)).decode(),
                      expect="Permission denied")
    assert shown["Result"] == "exit-code" and "Permission denied" in shown["journal"], shown


def test_the_sandboxed_unit_sets_psks_on_kernel_wireguard(booted):
    """Kernel WireGuard: `wg` talks netlink with the unit's CAP_NET_ADMIN, no socket involved."""
    inside = booted
    added = inside("ip", "link", "add", "wgk0", "type", "wireguard", mount=False, check=False)
    if added.returncode != 0 and "Unknown device type" in added.stderr:
        pytest.skip("this kernel has no WireGuard (CONFIG_WIREGUARD unset): only wireguard-go can be tested here")
    assert added.returncode == 0, added.stderr
    kernel_psk = base64.b64encode(os.urandom(32)).decode()
    shown = run_probe(inside, "qkdd-probe-kernel", "wgk0", kernel_psk, expect=PEER_PUBLIC_KEY)
    assert (shown["Result"], shown["ExecMainStatus"]) == ("success", "0"), shown
    assert preshared_key(inside, "wgk0") == kernel_psk

"""Real WireGuard for the tests: two network namespaces joined by a veth pair, wireguard-go and `wg` in
each, and qkdd daemons run inside them with `ip netns exec`.

Addresses are private test addresses that exist only inside the namespaces the test creates (10.231.N.0/24
on the veth pair, 10.232.N.0/24 inside the tunnel). Interface names carry the test process id, because
wireguard-go's control sockets (/var/run/wireguard/IF.sock) are shared by all namespaces.
"""
from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

WG_RUN_DIR = Path("/var/run/wireguard")
WAIT_S = 20.0


def missing_requirements() -> str | None:
    """Why these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, wireguard-go)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    for tool in ("ip", "wg", "wireguard-go", "ping"):
        if shutil.which(tool) is None:
            return f"needs {tool} (scripts/system-packages.txt)"
    return None


def run(*args: str, input: bytes | None = None, check: bool = True, timeout: float = 10.0) -> str:
    result = subprocess.run(list(args), input=input, capture_output=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.decode(errors='replace')}")
    return result.stdout.decode()


def wait_for(what: str, predicate, timeout_s: float = WAIT_S, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


class WgEnd:
    """One namespace with a veth end and a wireguard-go interface."""

    def __init__(self, netns: str, interface: str, veth_ip: str, tunnel_ip: str, log_dir: Path):
        self.netns = netns
        self.interface = interface
        self.veth_ip = veth_ip
        self.tunnel_ip = tunnel_ip
        self.log_dir = log_dir
        self.private_key = run("wg", "genkey").strip()
        self.public_key = run("wg", "pubkey", input=self.private_key.encode()).strip()
        self.process: subprocess.Popen | None = None
        self.peer: WgEnd | None = None

    def ns(self, *args: str, **kwargs) -> str:
        return run("ip", "netns", "exec", self.netns, *args, **kwargs)

    @property
    def socket_path(self) -> Path:
        return WG_RUN_DIR / f"{self.interface}.sock"

    def start_wireguard(self) -> None:
        log = open(self.log_dir / f"wireguard-go-{self.interface}.log", "wb")
        self.process = subprocess.Popen(["ip", "netns", "exec", self.netns, "wireguard-go", "-f", self.interface],
                                        stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(f"{self.socket_path}", self.socket_path.exists)
        self.ns("wg", "set", self.interface, "private-key", "/dev/stdin", "listen-port", "51820",
                input=self.private_key.encode() + b"\n")

    def add_peer(self, peer: "WgEnd", psk_b64: str | None = None) -> None:
        self.peer = peer
        self.ns("wg", "set", self.interface, "peer", peer.public_key, "endpoint", f"{peer.veth_ip}:51820",
                "allowed-ips", f"{peer.tunnel_ip}/32", "preshared-key", "/dev/stdin" if psk_b64 else "/dev/null",
                input=(psk_b64 + "\n").encode() if psk_b64 else b"")

    def psk(self) -> str:
        """The peer's pre-shared key as `wg show` prints it ("(none)" when unset)."""
        for line in self.ns("wg", "show", self.interface, "preshared-keys").splitlines():
            key, _, value = line.partition("\t")
            if key == self.peer.public_key:
                return value.strip()
        raise AssertionError(f"{self.interface} has no peer {self.peer.public_key}")

    def latest_handshake(self) -> int:
        for line in self.ns("wg", "show", self.interface, "latest-handshakes").splitlines():
            key, _, value = line.partition("\t")
            if key == self.peer.public_key:
                return int(value)
        return 0

    def force_handshake(self) -> None:
        """Drop the peer's sessions by removing and re-adding it with the same settings and PSK (the PSK
        passes through stdin): the next packet needs a fresh handshake, which uses the PSK installed now.
        (wireguard-go keeps its sessions across a PSK change and across link down/up.)"""
        psk = self.psk()
        self.ns("wg", "set", self.interface, "peer", self.peer.public_key, "remove")
        self.add_peer(self.peer, None if psk == "(none)" else psk)

    def ping(self, count: int = 1, wait_s: int = 2) -> bool:
        result = subprocess.run(["ip", "netns", "exec", self.netns, "ping", "-c", str(count), "-W", str(wait_s),
                                 "-i", "0.2", self.peer.tunnel_ip], capture_output=True, timeout=30)
        return result.returncode == 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class WgPair:
    """Two namespaces, a veth pair, a WireGuard tunnel between them without PSK."""

    def __init__(self, tmp: Path):
        tag = os.getpid() % 100000
        subnet = 1 + os.getpid() % 250
        self.a = WgEnd(f"qkwg{tag}a", f"qkw{tag}a", f"10.231.{subnet}.1", f"10.232.{subnet}.1", tmp)
        self.b = WgEnd(f"qkwg{tag}b", f"qkw{tag}b", f"10.231.{subnet}.2", f"10.232.{subnet}.2", tmp)
        self.veth = (f"qkv{tag}a", f"qkv{tag}b")

    def up(self) -> "WgPair":
        a, b = self.a, self.b
        for end in (a, b):
            run("ip", "netns", "add", end.netns)
            run("ip", "-n", end.netns, "link", "set", "lo", "up")
        run("ip", "link", "add", self.veth[0], "type", "veth", "peer", "name", self.veth[1])
        for end, veth in ((a, self.veth[0]), (b, self.veth[1])):
            run("ip", "link", "set", veth, "netns", end.netns)
            run("ip", "-n", end.netns, "addr", "add", f"{end.veth_ip}/24", "dev", veth)
            run("ip", "-n", end.netns, "link", "set", veth, "up")
            end.start_wireguard()
        a.add_peer(b)
        b.add_peer(a)
        for end in (a, b):
            run("ip", "-n", end.netns, "addr", "add", f"{end.tunnel_ip}/24", "dev", end.interface)
            run("ip", "-n", end.netns, "link", "set", end.interface, "up")
        return self

    def down(self) -> None:
        for end in (self.a, self.b):
            end.stop()
            run("ip", "netns", "del", end.netns, check=False)


class QkddInNetns:
    """`qkdd run` inside a namespace; stderr (the log) goes to a file the test reads."""

    def __init__(self, netns: str, config_path: Path, log_path: Path, *, env: dict[str, str] | None = None):
        self.netns = netns
        self.config_path = config_path
        self.log_path = log_path
        self.extra_env = env or {}          # added to the daemon's environment (e.g. LD_PRELOAD)
        self.process: subprocess.Popen | None = None
        self._run_offset = 0                # where this run's lines start in the log (restarts append)

    def start(self, *, wait_ready: bool = True) -> "QkddInNetns":
        env = {key: value for key, value in os.environ.items() if not key.startswith(("QKD_", "KMS_"))
               and key not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY",
                               "JOURNAL_STREAM")}
        env.update(self.extra_env)
        self._run_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        # `ip netns exec` execs the command, so the pid is the daemon's own (signals reach it).
        self.process = subprocess.Popen(["ip", "netns", "exec", self.netns, sys.executable, "-m", "qkdd", "run",
                                         "--config", str(self.config_path)], stdout=log, stderr=log, env=env)
        log.close()
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = WAIT_S) -> None:
        """Until this run (not an earlier one in the same log) logged its ready line."""
        wait_for("the daemon's ready line", lambda: "msg=ready" in self.run_log() or self._exited(), timeout_s)
        assert self.process.poll() is None, self.run_log()

    def _exited(self) -> bool:
        return self.process.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def run_log(self) -> str:
        """The lines of the current run."""
        with open(self.log_path, "rb") as handle:
            handle.seek(self._run_offset)
            return handle.read().decode(errors="replace")

    def rotate_now(self) -> None:
        self.process.send_signal(signal.SIGUSR1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def key_forms(material: bytes) -> list[bytes]:
    """The ways a key could leak as text or bytes: raw, base64 (wg's form), hex."""
    b64 = base64.b64encode(material)
    return [material, b64, b64.rstrip(b"="), material.hex().encode(), material.hex().upper().encode()]


class CmdlineWatcher:
    """Reads every /proc/*/cmdline and environ continuously in a thread and keeps each distinct content,
    so that keys known only afterwards (they come from the live link) can be looked for in all of them."""

    def __init__(self):
        self.seen: set[bytes] = set()
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "CmdlineWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                for name in ("cmdline", "environ"):
                    try:
                        with open(f"/proc/{pid}/{name}", "rb") as handle:
                            self.seen.add(handle.read())
                    except OSError:
                        continue
            self.scans += 1
            time.sleep(0.01)

    def hits(self, secrets: list[bytes]) -> list[bytes]:
        forms = [form for secret in secrets for form in key_forms(secret)]
        return [data[:200] for data in self.seen if any(form in data for form in forms)]


def files_containing(root: Path, secrets: list[bytes]) -> list[str]:
    forms = [form for secret in secrets for form in key_forms(secret)]
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if any(form in data for form in forms):
                found.append(str(path))
    return found


def parse_metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = re.match(r"([a-z_]+)(\{[^}]*\})? (\S+)", line)
        if match and match.group(1) == name and all(f'{k}="{v}"' in (match.group(2) or "") for k, v in labels.items()):
            return float(match.group(3))
    return None


_HTTP_SNIPPET = """
import json, ssl, sys, urllib.error, urllib.request
method, url, body, cafile, cert, key = sys.argv[1:7]
context = None
if cafile:
    context = ssl.create_default_context(cafile=cafile)
    if cert:
        context.load_cert_chain(cert, key)
request = urllib.request.Request(url, method=method, data=body.encode() if body else None,
                                 headers={"content-type": "application/json"} if body else {})
try:
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        status, text = response.status, response.read().decode()
except urllib.error.HTTPError as exc:
    status, text = exc.code, exc.read().decode()
print(json.dumps({"status": status, "body": text}))
"""


def http_in_netns(netns: str, method: str, url: str, body: dict | None = None, *, cafile: str = "",
                  cert: str = "", key: str = "") -> tuple[int, str]:
    """One HTTP(S) request made from inside `netns` (the daemons listen on the namespace's loopback):
    (status, body text). `cafile` verifies the server, `cert`/`key` present a client certificate."""
    import json
    out = run("ip", "netns", "exec", netns, sys.executable, "-c", _HTTP_SNIPPET, method, url,
              json.dumps(body) if body is not None else "", cafile, cert, key)
    answer = json.loads(out)
    return answer["status"], answer["body"]

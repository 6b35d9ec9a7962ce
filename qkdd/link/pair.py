"""Two qkdd daemons on loopback joined by a simulated link: Alice (source, fiber) and Bob (detector).

Writes peer identities and one config per end into a working directory, picks free loopback ports,
starts `python -m qkdd run` twice and waits until both answer. Used by `make demo`, `bench.link` and
the two-daemon tests.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import ssl

import httpx

from qkdd.hal.sim.settings import MAX_FRAME_SLOTS
from qkdd.peer import generate_identity, save_private_key, save_public_key
from qkdd.pki import init_pki

LINK_ID = "sim-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class End:
    role: str
    config_path: Path
    api: str
    health: str
    state_dir: Path
    log_path: Path
    process: subprocess.Popen | None = None
    tls: bool = False

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://{self.api}{path}"


@dataclass
class LinkPair:
    workdir: Path
    distance_km: float = 25.0
    frame_detections: int = 1 << 21     # a frame ends at this many detections at Bob
    frames_in_flight: int = 4
    realtime: bool = False              # pace the simulated source at its clock (false: flat out)
    admin_tls: bool = False             # API over mTLS with an "admin" client certificate (sim control)
    extra_link: dict = field(default_factory=dict)
    extra_sim: dict = field(default_factory=dict)
    ends: dict[str, End] = field(default_factory=dict)
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10.0))

    def write(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for role in ("alice", "bob"):
            identity = generate_identity()
            save_private_key(identity, self.workdir / f"{role}.key", overwrite=True)
            save_public_key(identity.public_key(), self.workdir / f"{role}.pub", overwrite=True)
        peer_port, quantum_port = free_port(), free_port()
        api_tls = ""
        if self.admin_tls:
            pki = init_pki(self.workdir / "pki", ["localhost"], ["admin"])
            server = pki.kmes["localhost"]
            api_tls = (f'admin_clients = ["cn:admin"]\n[api.tls]\ncert_file = "{server.cert_file}"\n'
                       f'key_file = "{server.key_file}"\nclient_ca_file = "{pki.ca_cert_file}"\n'
                       'client_cert = "optional"\n')
            context = ssl.create_default_context(cafile=str(pki.ca_cert_file))
            context.load_cert_chain(str(pki.saes["admin"].cert_file), str(pki.saes["admin"].key_file))
            self.http = httpx.Client(verify=context, timeout=10.0)
        for role, other in (("alice", "bob"), ("bob", "alice")):
            api, health = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
            state_dir = self.workdir / f"state-{role}"
            peer = (f'peer_listen = "127.0.0.1:{peer_port}"' if role == "alice"
                    else f'peer_addr = "127.0.0.1:{peer_port}"')
            link_extra = "".join(f"{k} = {_toml(v)}\n" for k, v in self.extra_link.items())
            sim_extra = "".join(f"{k} = {_toml(v)}\n" for k, v in self.extra_sim.items())
            text = f"""[daemon]
state_dir = "{state_dir}"
log_level = "info"

[api]
listen = "{api}"
{api_tls}
[health]
listen = "{health}"

[[links]]
link_id = "{LINK_ID}"
role = "{role}"
driver = "sim"
{peer}
peer_key_file = "{self.workdir / f'{role}.key'}"
peer_public_key = "{self.workdir / f'{other}.pub'}"
device_addr = "127.0.0.1:{quantum_port}"
frames_in_flight = {self.frames_in_flight}
{link_extra}
[links.sim]
distance_km = {self.distance_km}
frame_slots = {MAX_FRAME_SLOTS}
max_detections_per_frame = {self.frame_detections}
realtime = {_toml(self.realtime)}
{sim_extra}"""
            path = self.workdir / f"{role}.toml"
            path.write_text(text)
            self.ends[role] = End(role, path, api, health, state_dir, self.workdir / f"{role}.log",
                                  tls=self.admin_tls)

    def start(self, role: str) -> End:
        end = self.ends[role]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("QKD_", "KMS_", "NOTIFY_SOCKET"))}
        log = open(end.log_path, "ab")
        end.process = subprocess.Popen([sys.executable, "-m", "qkdd", "run", "--config", str(end.config_path)],
                                       env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        return end

    def wait_ready(self, role: str, timeout_s: float = 60.0) -> None:
        end = self.ends[role]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if end.process is not None and end.process.poll() is not None:
                raise RuntimeError(f"{role} daemon exited with status {end.process.returncode}:\n"
                                   + end.log_path.read_text()[-3000:])
            try:
                httpx.get(f"http://{end.health}/healthz", timeout=1.0)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError(f"{role} daemon not ready within {timeout_s} s")

    def start_both(self) -> None:
        self.write()
        for role in ("alice", "bob"):
            self.start(role)
        for role in ("alice", "bob"):
            self.wait_ready(role)

    def kill(self, role: str, sig: int = signal.SIGKILL) -> None:
        end = self.ends[role]
        if end.process is not None and end.process.poll() is None:
            end.process.send_signal(sig)
            end.process.wait(30)

    def stop(self) -> None:
        for role in ("alice", "bob"):
            end = self.ends.get(role)
            if end is None or end.process is None or end.process.poll() is not None:
                continue
            end.process.send_signal(signal.SIGTERM)
            try:
                end.process.wait(20)
            except subprocess.TimeoutExpired:
                end.process.kill()
                end.process.wait()

    def metrics(self, role: str) -> dict:
        return self.http.get(self.ends[role].url(f"/v1/links/{LINK_ID}/metrics"), timeout=5.0).json()

    def __enter__(self) -> "LinkPair":
        self.start_both()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace('"', '\\"') + '"'

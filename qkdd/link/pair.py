"""Two qkdd daemons on loopback joined by a simulated link: Alice (source, fiber) and Bob (detector).

Writes peer identities and one config per end into a working directory, picks free loopback ports,
starts `python -m qkdd run` twice and waits until both answer. Used by `make demo`, `bench.link` and
the two-daemon tests.

With `admin_tls` or `etsi014` the API listeners run mTLS with certificates from a development PKI in the
working directory (qkdd.pki): Alice's end is KME `kme-a`, Bob's `kme-b`. `etsi014` adds the ETSI GS QKD
014 KMEs: SAE `sae-a` connects to Alice's KME and `sae-b` to Bob's, and the KMEs record reservations over
the link's own peer session. `mtls_client(name)` is an HTTP client presenting an SAE's (or the admin's)
certificate, or none.
"""
from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from qkdd.hal.sim.settings import MAX_FRAME_SLOTS
from qkdd.peer import generate_identity, save_private_key, save_public_key
from qkdd.pki import DevPKI, init_pki

LINK_ID = "sim-1"
KME_OF_ROLE = {"alice": "kme-a", "bob": "kme-b"}
SAE_OF_ROLE = {"alice": "sae-a", "bob": "sae-b"}
ADMIN_CLIENT = "admin"          # the client certificate allowed on the admin routes (sim control)


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
    frame_slots: int = MAX_FRAME_SLOTS  # ... or at this many pulse slots, whichever comes first
    frames_in_flight: int = 4
    realtime: bool = False              # pace the simulated source at its clock (false: flat out)
    admin_tls: bool = False             # API over mTLS with an "admin" client certificate (sim control)
    etsi014: bool = False               # ETSI 014 KMEs at both ends (API over mTLS, SAEs sae-a and sae-b)
    extra_link: dict = field(default_factory=dict)
    extra_sim: dict = field(default_factory=dict)
    ends: dict[str, End] = field(default_factory=dict)
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10.0))
    pki: DevPKI | None = None

    def write(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for role in ("alice", "bob"):
            identity = generate_identity()
            save_private_key(identity, self.workdir / f"{role}.key", overwrite=True)
            save_public_key(identity.public_key(), self.workdir / f"{role}.pub", overwrite=True)
        peer_port, quantum_port = free_port(), free_port()
        tls = self.admin_tls or self.etsi014
        if tls:
            self.pki = init_pki(self.workdir / "pki", list(KME_OF_ROLE.values()),
                                [ADMIN_CLIENT, *SAE_OF_ROLE.values()], force=True)
            self.http = self.mtls_client(ADMIN_CLIENT)
        for role, other in (("alice", "bob"), ("bob", "alice")):
            api, health = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
            state_dir = self.workdir / f"state-{role}"
            peer = (f'peer_listen = "127.0.0.1:{peer_port}"' if role == "alice"
                    else f'peer_addr = "127.0.0.1:{peer_port}"')
            api_tls = self._api_tls(role) if tls else ""
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
frame_slots = {self.frame_slots}
max_detections_per_frame = {self.frame_detections}
realtime = {_toml(self.realtime)}
{sim_extra}"""
            if self.etsi014:
                text += _etsi014_config(role, other)
            path = self.workdir / f"{role}.toml"
            path.write_text(text)
            self.ends[role] = End(role, path, api, health, state_dir, self.workdir / f"{role}.log", tls=tls)

    def _api_tls(self, role: str) -> str:
        server = self.pki.kmes[KME_OF_ROLE[role]]
        return (f'admin_clients = ["cn:{ADMIN_CLIENT}"]\n[api.tls]\ncert_file = "{server.cert_file}"\n'
                f'key_file = "{server.key_file}"\nclient_ca_file = "{self.pki.ca_cert_file}"\n'
                'client_cert = "optional"\n')

    def mtls_client(self, client: str | None) -> httpx.Client:
        """An HTTP client for the TLS API presenting `client`'s certificate (an SAE or ADMIN_CLIENT; None:
        no certificate, as the /v1 routes allow)."""
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert_file))
        if client is not None:
            issued = self.pki.saes[client]
            context.load_cert_chain(str(issued.cert_file), str(issued.key_file))
        return httpx.Client(verify=context, timeout=10.0)

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
        return self.http.get(self.ends[role].url(f"/v1/links/{LINK_ID}/metrics"), timeout=30.0).json()

    def measure_window(self, seconds: float, first_key_timeout_s: float, snapshot=None) -> tuple[dict, dict, float]:
        """Alice's link metrics (or what `snapshot()` returns) at the start and end of a `seconds` window that
        opens once the first keys are stored (start-up and the first frames left out), and the window's
        length in seconds."""
        snapshot = snapshot or (lambda: self.metrics("alice"))
        deadline = time.monotonic() + first_key_timeout_s
        while self.metrics("alice")["keys_generated"] == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no key within {first_key_timeout_s:g} s")
            time.sleep(0.2)
        start, t0 = snapshot(), time.monotonic()
        time.sleep(seconds)
        end, t1 = snapshot(), time.monotonic()
        return start, end, t1 - t0

    def process_figures(self, role: str) -> dict[str, float]:
        """From the daemon's /metrics: its process CPU seconds and its event loop's stalls (qkdd.loop_watch)."""
        wanted = {"process_cpu_seconds_total": "cpu_s_process", "qkd_event_loop_stall_max_seconds": "worst_stall_s",
                  "qkd_event_loop_stall_max_cpu_seconds": "worst_stall_cpu_s",
                  "qkd_event_loop_stalls_total": "stalls_over_50ms"}
        text = self.http.get(f"http://{self.ends[role].health}/metrics", timeout=30.0).text
        figures = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in wanted:
                figures[wanted[name]] = float(value)
        return figures

    def __enter__(self) -> "LinkPair":
        self.start_both()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _etsi014_config(role: str, other: str) -> str:
    """`[etsi014]` for one end: its KME, both SAEs, and the other KME reached over this link."""
    saes = "".join(f'[[etsi014.saes]]\nsae_id = "{SAE_OF_ROLE[end]}"\nkme_id = "{KME_OF_ROLE[end]}"\n'
                   for end in ("alice", "bob"))
    return (f'\n[etsi014]\nkme_id = "{KME_OF_ROLE[role]}"\n{saes}'
            f'[[etsi014.peers]]\nkme_id = "{KME_OF_ROLE[other]}"\nlink_id = "{LINK_ID}"\n')


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace('"', '\\"') + '"'

"""Two real qkdd daemons (KME A and KME B) with mTLS ETSI 014 listeners, for the ETSI 014 tests and benchmark.

Two set-ups:
- live (`make_pair(..., live_link=True)`): the daemons run the two ends of a simulated link (KME A is
  Alice, KME B is Bob; unpaced small frames, so keys flow within seconds) and share its key store and
  its peer session, which carries the KMEs' reservation exchange. Wait for keys with `wait_for_keys`.
- seeded (the default, used by bench/etsi014.py): no link engine runs; the two key stores are seeded
  with identical keys under identical ids through the real KeyStore API into each daemon's real SQLite
  file before it starts (KME A may allocate the even-numbered keys and KME B the odd ones, the key
  store's `allocatable` partition), and the KMEs talk over a classical channel of their own
  (`[etsi014.peers.channel]`). A fixed store suits the benchmark and the tests that need a known count.
"""
from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from qkdd.hal.sim.settings import MAX_FRAME_SLOTS

from qkdd.keystore import KeyStore, create_kek, load_kek
from qkdd.peer import generate_identity, save_private_key, save_public_key
from qkdd.pki import DevPKI, init_pki
from tests.daemon_support import Daemon, base_config, clean_env

LINK_ID = "a-b"
STORED_KEY_BITS = 256
LIVE_FRAME_DETECTIONS = 250_000     # a frame ends at this many detections at Bob (small: keys in seconds)
SAES = {"sae-a": "kme-a", "sae-b": "kme-b", "sae-d": "kme-b", "sae-e": "kme-a"}   # sae-c is unknown


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seed_key_stores(state_dirs: dict[str, Path], count: int, *, first_frame: int = 0) -> list[tuple[str, bytes]]:
    """Identical keys at both ends, committed (AVAILABLE); KME A allocates even ones, KME B odd ones."""
    keys = [(str(uuid.uuid4()), os.urandom(STORED_KEY_BITS // 8)) for _ in range(count)]
    for name, state_dir in state_dirs.items():
        kek_path = state_dir / "kek"
        kek = load_kek(str(kek_path)) if kek_path.exists() else create_kek(str(kek_path))
        store = KeyStore(str(state_dir / "keys.db"), kek)
        allocatable = [(index % 2 == 0) == (name == "kme-a") for index in range(count)]
        store.put_pending(LINK_ID, first_frame, keys, expires_at=4e9, allocatable=allocatable)
        store.commit_frame(LINK_ID, first_frame)
        store.close()
    return keys


@dataclass
class KmePair:
    root: Path
    pki: DevPKI
    channel_port: int
    live_link: bool = False
    daemons: dict[str, Daemon] = field(default_factory=dict)
    state_dirs: dict[str, Path] = field(default_factory=dict)
    config_texts: dict[str, str] = field(default_factory=dict)

    def start(self, name: str, *, log_to_file: bool = False, log_level: str = "info") -> "Daemon | FileLoggedDaemon":
        """Start a daemon; with `log_to_file` its log goes to a file rather than a pipe read by a thread of
        this process (benchmarks: a busy load generator must not stall the daemon's log writes), and
        `log_level` may be raised above info (no access log line per request)."""
        if log_to_file:
            config = self.config_texts[name].replace('log_level = "info"', f'log_level = "{log_level}"')
            daemon = FileLoggedDaemon(config, self.root / name, quiet=log_level != "info").start()
        else:
            daemon = Daemon(self.config_texts[name], self.root / name, clean_env(), api_tls=True).start()
        self.daemons[name] = daemon
        return daemon

    def wait_channel(self, name: str) -> None:
        """Until the daemon's KME can reach the peer KME (live: the link's session is resynchronised and
        serves the KME's channel; seeded: the KME's own channel is up)."""
        pattern = r"session \S+ ready" if self.live_link else r"session \S+ established"
        self.daemons[name].wait_for(pattern, timeout_s=30)

    def sessions_ready(self, name: str) -> int:
        """How many peer sessions the daemon has had ready so far (live link; from its log)."""
        return sum(1 for line in self.daemons[name].log.splitlines() if re.search(r"session \S+ ready", line))

    def wait_for_keys(self, minimum: int = 1, timeout_s: float = 60.0) -> None:
        """Until each KME's Get status reports at least `minimum` stored keys for the other end's SAE
        (live link: keys keep arriving)."""
        deadline = time.monotonic() + timeout_s
        for kme, master, slave in (("kme-a", "sae-a", "sae-b"), ("kme-b", "sae-b", "sae-a")):
            with self.client(master) as client:
                while True:
                    response = client.get(self.url(kme, f"/api/v1/keys/{slave}/status"))
                    assert response.status_code == 200, response.text
                    if response.json()["stored_key_count"] >= minimum:
                        break
                    assert time.monotonic() < deadline, f"no keys at {kme} within {timeout_s} s"
                    time.sleep(0.2)

    def url(self, name: str, path: str) -> str:
        host, port = self.daemons[name].api_address
        return f"https://{host}:{port}{path}"

    def hostname(self, name: str) -> str:
        host, port = self.daemons[name].api_address
        return f"{host}:{port}"

    def client(self, sae: str | None) -> httpx.Client:
        """An mTLS client presenting `sae`'s certificate (None: no certificate)."""
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert_file))
        if sae is not None:
            issued = self.pki.saes[sae]
            context.load_cert_chain(str(issued.cert_file), str(issued.key_file))
        return httpx.Client(verify=context, timeout=15)

    def stop_all(self) -> None:
        for daemon in self.daemons.values():
            daemon.kill()


def make_pair(root: Path, *, stored_keys: int = 400, etsi_extra: str = "",
              live_link: bool = False) -> tuple[KmePair, list]:
    """The two daemons' configurations (not started). Seeded: `stored_keys` keys in each store, returned
    as (key_id, material) pairs. Live link: nothing seeded, an empty list returned."""
    pki = init_pki(root / "pki", ["kme-a", "kme-b"], [*SAES, "sae-c"])
    pair = KmePair(root, pki, free_port(), live_link=live_link)
    identities = {}
    for name in ("kme-a", "kme-b"):
        (root / name).mkdir()
        state_dir = root / name / "state"
        state_dir.mkdir(mode=0o700)
        pair.state_dirs[name] = state_dir
        identity = generate_identity()
        save_private_key(identity, root / name / "identity.key")
        save_public_key(identity.public_key(), root / name / "identity.pub")
        identities[name] = identity
    keys = [] if live_link else seed_key_stores(pair.state_dirs, stored_keys)
    device_port = free_port()
    saes = "".join(f'[[etsi014.saes]]\nsae_id = "{sae}"\nkme_id = "{kme}"\n' for sae, kme in SAES.items())
    for name, peer, channel in (("kme-a", "kme-b", f'dial = "127.0.0.1:{pair.channel_port}"'),
                                ("kme-b", "kme-a", f'listen = "127.0.0.1:{pair.channel_port}"')):
        issued = pki.kmes[name]
        api_tls = (f'[api.tls]\ncert_file = "{issued.cert_file}"\nkey_file = "{issued.key_file}"\n'
                   f'client_ca_file = "{pki.ca_cert_file}"\nclient_cert = "optional"\n')
        etsi = (f'[etsi014]\nkme_id = "{name}"\n{etsi_extra}\n{saes}'
                f'[[etsi014.peers]]\nkme_id = "{peer}"\nlink_id = "{LINK_ID}"\n')
        if live_link:
            links = live_link_config(name, peer, root, pair.channel_port, device_port)
        else:
            links = ""
            etsi += (f'[etsi014.peers.channel]\nidentity_key_file = "{root / name / "identity.key"}"\n'
                     f'peer_public_key_file = "{root / peer / "identity.pub"}"\n{channel}\n')
        pair.config_texts[name] = (base_config(pair.state_dirs[name], api_extra=api_tls, links=links)
                                   + "\n" + etsi)
    return pair, keys


def live_link_config(name: str, peer: str, root: Path, peer_port: int, device_port: int) -> str:
    """`[[links]]` for one end of the simulated link: KME A is Alice (accepts the peer session, her
    simulated source listens on `device_port`), KME B is Bob (dials both)."""
    alice = name == "kme-a"
    session = f'peer_listen = "127.0.0.1:{peer_port}"' if alice else f'peer_addr = "127.0.0.1:{peer_port}"'
    return (f'[[links]]\nlink_id = "{LINK_ID}"\nrole = "{"alice" if alice else "bob"}"\ndriver = "sim"\n'
            f'{session}\npeer_key_file = "{root / name / "identity.key"}"\n'
            f'peer_public_key = "{root / peer / "identity.pub"}"\ndevice_addr = "127.0.0.1:{device_port}"\n'
            f'[links.sim]\nframe_slots = {MAX_FRAME_SLOTS}\nmax_detections_per_frame = {LIVE_FRAME_DETECTIONS}\n'
            'realtime = false\n')


class FileLoggedDaemon:
    """`qkdd run` with stderr in a file (the subset of tests.daemon_support.Daemon the benchmark uses)."""

    def __init__(self, config_text: str, workdir: Path, *, quiet: bool = False) -> None:
        self.quiet = quiet          # no info lines: readiness is learnt by connecting to a fixed port
        self.api_port = free_port() if quiet else 0
        self.config_path = workdir / "qkdd.toml"
        self.config_path.write_text(
            config_text.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{self.api_port}"', 1))
        self.log_path = workdir / "qkdd.log"
        self.process: subprocess.Popen | None = None
        self.api_address: tuple[str, int] | None = None

    def start(self) -> "FileLoggedDaemon":
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "qkdd", "run", "--config", str(self.config_path)],
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                            env=clean_env())
        if self.quiet:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", self.api_port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            self.api_address = ("127.0.0.1", self.api_port)
            return self
        line = self.wait_for(r"msg=ready ")
        match = re.search(r"api_address=(\S+):(\d+)", line)
        self.api_address = (match.group(1), int(match.group(2)))
        return self

    def wait_for(self, pattern: str, timeout_s: float = 30.0) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.log_path.read_text().splitlines():
                if regex.search(line):
                    return line
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r}; log:\n{self.log_path.read_text()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

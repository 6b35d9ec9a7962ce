"""Two real `qkdd run` daemons (ends "kme-a" and "kme-b" of link "a-b") serving `[etsi004]` and `[skip]`, for
the daemon tests and the benchmarks (bench/etsi004.py, bench/skip.py).

Two set-ups:
- live (the default): the daemons run the two ends of a simulated link (A is Alice, B is Bob); keys flow
  within seconds of the session coming up.
- seeded (`seeded_keys=N`): the link's key stores are seeded with N identical keys under identical ids
  (A allocates the even-numbered ones, B the odd ones) and no link engine runs: the link is declared with
  protocol "e91" on the serial driver, which has no link engine in the daemon, so the daemon runs only its
  classical channel and the reservation exchange on it. A fixed store suits the benchmarks.
"""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from qkdd.keystore import KeyStore, kek_for_state_dir
from qkdd.link.service import KEYSTORE_FILE
from qkdd.peer import generate_identity, save_private_key, save_public_key
from qkdd.pki import init_pki
from tests.daemon_support import Daemon, _address as address_in, base_config, clean_env
from tests.etsi004_support import ROUTERS, SYSTEMS, Client004
from tests.etsi014_support import LINK_ID, FileLoggedDaemon, free_port, live_link_config

NAMES = {"kme-a": "a", "kme-b": "b"}
STORED_KEY_BITS = 256
START_TIMEOUT_S = 60.0


def seed(state_dirs: dict[str, Path], count: int) -> None:
    keys = [(str(uuid.uuid4()), os.urandom(STORED_KEY_BITS // 8)) for _ in range(count)]
    for name, state_dir in state_dirs.items():
        store = KeyStore(str(state_dir / KEYSTORE_FILE), kek_for_state_dir(str(state_dir)))
        allocatable = [(index % 2 == 0) == (name == "kme-a") for index in range(count)]
        for start in range(0, count, 50_000):
            store.put_pending(LINK_ID, start, keys[start:start + 50_000], expires_at=4e9,
                              allocatable=allocatable[start:start + 50_000])
            store.commit_frame(LINK_ID, start)
        store.close()


def seeded_link_config(name: str, peer: str, root: Path, peer_port: int) -> str:
    alice = name == "kme-a"
    session = f'peer_listen = "127.0.0.1:{peer_port}"' if alice else f'peer_addr = "127.0.0.1:{peer_port}"'
    return (f'[[links]]\nlink_id = "{LINK_ID}"\nrole = "{"alice" if alice else "bob"}"\ndriver = "serial"\n'
            f'device_addr = "/dev/null"\nprotocol = "e91"\n{session}\n'
            f'peer_key_file = "{root / name / "identity.key"}"\n'
            f'peer_public_key = "{root / peer / "identity.pub"}"\n')


class AppPair:
    def __init__(self, root: Path, *, seeded_keys: int = 0, capacity_bps: float = 100000.0) -> None:
        self.root = root
        self.seeded = bool(seeded_keys)
        self.pki = init_pki(root / "pki", ["kme-a", "kme-b"], ["app-a", "app-b"])
        self.ports = {name: {"etsi004": free_port(), "skip": free_port()} for name in NAMES}
        self.configs: dict[str, str] = {}
        self.daemons: dict = {}
        channel_port, device_port = free_port(), free_port()
        state_dirs = {}
        for name in NAMES:
            state_dirs[name] = root / name / "state"
            state_dirs[name].mkdir(parents=True, mode=0o700)
            identity = generate_identity()
            save_private_key(identity, root / name / "identity.key")
            save_public_key(identity.public_key(), root / name / "identity.pub")
        if seeded_keys:
            seed(state_dirs, seeded_keys)
        for name, peer in (("kme-a", "kme-b"), ("kme-b", "kme-a")):
            end, other = NAMES[name], NAMES[peer]
            issued = self.pki.kmes[name]
            identity, psk = ROUTERS[end]
            (root / name / "router.psk").write_text(psk.hex() + "\n")
            apps = (f'[etsi004]\nlink_id = "{LINK_ID}"\nlisten = "127.0.0.1:{self.ports[name]["etsi004"]}"\n'
                    f'capacity_bps = {capacity_bps}\n'
                    f'[etsi004.tls]\ncert_file = "{issued.cert_file}"\nkey_file = "{issued.key_file}"\n'
                    f'client_ca_file = "{self.pki.ca_cert_file}"\nclient_cert = "required"\n'
                    f'[skip]\nlocal_system_id = "{SYSTEMS[end]}"\nlisten = "127.0.0.1:{self.ports[name]["skip"]}"\n'
                    f'[[skip.remotes]]\nsystem_id = "{SYSTEMS[other]}"\nlink_id = "{LINK_ID}"\n'
                    f'[[skip.clients]]\nidentity = "{identity}"\npsk_file = "{root / name / "router.psk"}"\n')
            links = (seeded_link_config(name, peer, root, channel_port) if seeded_keys
                     else live_link_config(name, peer, root, channel_port, device_port))
            self.configs[name] = base_config(state_dirs[name], links=links) + "\n" + apps

    def start(self, name: str, *, log_to_file: bool = False, log_level: str = "info"):
        if log_to_file:
            config = self.configs[name].replace('log_level = "info"', f'log_level = "{log_level}"')
            daemon = FileLoggedDaemon(config, self.root / name, quiet=log_level != "info").start()
        else:
            # a start under a loaded machine may take longer than Daemon's own wait
            daemon = Daemon(self.configs[name], self.root / name, clean_env()).start(wait_ready=False)
            line = daemon.wait_for(r"msg=ready ", timeout_s=START_TIMEOUT_S)
            daemon.api_address = address_in(line, "api_address")
            daemon.health_address = address_in(line, "health_address")
        self.daemons[name] = daemon
        return daemon

    def wait_link(self, name: str, timeout_s: float = 60.0) -> None:
        """Until the daemon's link session is up (an OPEN before it is answered NO_QKD_CONNECTION): live, once
        the key stores are resynchronised ("ready"); seeded, once the session is established (its channels
        start right after)."""
        state = "established" if self.seeded else "ready"
        line = self.daemons[name].wait_for(rf"session \S+ {state}", timeout_s=timeout_s)
        session_id = re.search(rf"session (\S+) {state}", line).group(1)
        for other, daemon in self.daemons.items():       # the same session (both ends derive its id) at the other
            if other != name:                            # end too: its end may be ready a moment later
                daemon.wait_for(rf"session {session_id} {state}", timeout_s=timeout_s)

    def client(self, name: str, app: str) -> Client004:
        return Client004(self.pki, app, name, ("127.0.0.1", self.ports[name]["etsi004"]))

    def skip_address(self, name: str) -> tuple[str, int]:
        return ("127.0.0.1", self.ports[name]["skip"])

    def stop_all(self) -> None:
        for daemon in self.daemons.values():
            daemon.kill()

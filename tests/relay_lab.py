"""A relay network of real qkdd daemons, each in a network namespace of its own, joined by one veth pair
per simulated link (tests/test_relay_netns.py, bench/relay.py).

Every link runs the simulator (its quantum channel and the daemons' classical channel on the link's veth
pair; Alice listens, Bob dials) with slow frames, and both ends' key stores are seeded before start with
the same keys (the first end may hand out the even ones, the other the odd ones), as the chaos lab does:
the tests then measure the relay, not how fast this busy machine makes keys. Each daemon's API listens
on its namespace's loopback without TLS (local clients may take keys); `call` reaches it from a thread
that enters the namespace (tests.chaos_net.hop). Addresses are test addresses inside namespaces these
tests create (10.237.N.0/24); nothing leaves them.
"""
from __future__ import annotations

import contextlib
import os
import signal
import ssl
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from qkdd.keystore import KeyStore, create_kek
from qkdd.keystore.kek import KEK_FILE
from qkdd.link.service import KEYSTORE_FILE
from qkdd.peer import generate_identity, save_private_key, save_public_key
from tests.chaos_net import Tmpfs, hop
from tests.wireguard_support import QkddInNetns, run, wait_for

PEER_PORT, QUANTUM_PORT = 7443, 7081
API_PORT, HEALTH_PORT = 8071, 8072
KEY_BYTES = 32
SEEDED_EXPIRY_S = 86400.0


class RelayLab:
    """Nodes (names) and links (pairs of names); `up()` starts every daemon, `down()` cleans up."""

    def __init__(self, workdir: Path, nodes: list[str], links: list[tuple[str, str]], *, seeded_keys: int = 300,
                 trust: dict[str, int] | None = None, announce_interval_s: float = 2.0, engines: bool = True,
                 key_bits: int = 256, store_fs_bytes: int = 0, etsi014: list[str] | None = None,
                 etsi014_elsewhere: list[str] | None = None) -> None:
        self.workdir = workdir
        self.nodes = list(nodes)
        self.links = list(links)
        self.seeded_keys = seeded_keys
        self.trust = trust or {}
        self.announce_interval_s = announce_interval_s
        self.engines = engines
        self.key_bits = key_bits
        self.etsi014 = list(etsi014 or [])       # nodes with an ETSI 014 KME "kme-N" serving SAE "sae-N" (mTLS API)
        # node ids outside the lab whose KME "kme-N" (SAE "sae-N") the ETSI 014 nodes list as peers: a slave
        # SAE the network cannot reach
        self.etsi014_elsewhere = list(etsi014_elsewhere or [])
        self.pki = None
        # each node's state directory on a tmpfs of its own when given a size (no disk flushes: the bench
        # then measures the relay, not this machine's shared disk)
        self.tmpfs = {node: Tmpfs(workdir / f"fs-{node}", store_fs_bytes) for node in nodes} if store_fs_bytes else {}
        tag = os.getpid() % 100000
        self.netns = {node: f"qkr{tag}{node}" for node in nodes}
        self.link_ids = [f"{a}-{b}" for a, b in links]
        base = 1 + os.getpid() % 200
        self.addresses = {link_id: (f"10.237.{(base + i) % 250}.1", f"10.237.{(base + i) % 250}.2")
                          for i, link_id in enumerate(self.link_ids)}
        self._ifs = {link_id: (f"qr{tag}l{i}a", f"qr{tag}l{i}b") for i, link_id in enumerate(self.link_ids)}
        self.daemons: dict[str, QkddInNetns] = {}
        self._made: list[str] = []
        self._pool = ThreadPoolExecutor(max_workers=8)
        self._clients: dict[str, httpx.Client] = {}

    # -- set-up and tear-down ------------------------------------------------------------------------------
    def __enter__(self) -> RelayLab:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> None:
        for node in self.nodes:
            run("ip", "netns", "add", self.netns[node])
            self._made.append(self.netns[node])
            run("ip", "-n", self.netns[node], "link", "set", "lo", "up")
            identity = generate_identity()
            save_private_key(identity, self.workdir / f"{node}.key")
            save_public_key(identity.public_key(), self.workdir / f"{node}.pub")
            if node in self.tmpfs:
                self.tmpfs[node].mount()
                (self.workdir / f"state-{node}").symlink_to(self.tmpfs[node].path / "state")
                (self.tmpfs[node].path / "state").mkdir(mode=0o700)
            else:
                (self.workdir / f"state-{node}").mkdir(mode=0o700)
        for (a, b), link_id in zip(self.links, self.link_ids):
            if_a, if_b = self._ifs[link_id]
            run("ip", "link", "add", if_a, "type", "veth", "peer", "name", if_b)
            for node, interface, address in ((a, if_a, self.addresses[link_id][0]),
                                             (b, if_b, self.addresses[link_id][1])):
                run("ip", "link", "set", interface, "netns", self.netns[node])
                run("ip", "-n", self.netns[node], "addr", "add", f"{address}/24", "dev", interface)
                run("ip", "-n", self.netns[node], "link", "set", interface, "up")
        self._seed()
        if self.etsi014:
            from qkdd.pki import init_pki
            self.pki = init_pki(self.workdir / "pki", [f"kme-{n}" for n in self.etsi014],
                                [f"sae-{n}" for n in self.etsi014])
        for node in self.nodes:
            self.daemons[node] = QkddInNetns(self.netns[node], self._write_config(node),
                                             self.workdir / f"{node}.log")
            self.daemons[node].start(wait_ready=False)
        for daemon in self.daemons.values():
            daemon.wait_ready(timeout_s=90)

    def down(self) -> None:
        errors = []
        for daemon in self.daemons.values():
            try:
                daemon.stop()
            except Exception as exc:           # noqa: BLE001 - reported after the rest is cleaned up
                errors.append(exc)
        for client in self._clients.values():
            self._pool.submit(client.close).result()
        self._pool.shutdown()
        for name in self._made:
            run("ip", "netns", "del", name, check=False)
        for tmpfs in self.tmpfs.values():
            tmpfs.unmount()
        if errors:
            raise errors[0]

    def _seed(self) -> None:
        """The same keys at both ends of every link, each end's share alternating."""
        stores = {node: KeyStore(str(self.workdir / f"state-{node}" / KEYSTORE_FILE),
                                 create_kek(str(self.workdir / f"state-{node}" / KEK_FILE))) for node in self.nodes}
        try:
            for (a, b), link_id in zip(self.links, self.link_ids):
                keys = [(str(uuid.uuid4()), os.urandom(self.key_bits // 8)) for _ in range(self.seeded_keys)]
                for index, node in enumerate((a, b)):
                    stores[node].put_pending(link_id, 0, keys, expires_at=time.time() + SEEDED_EXPIRY_S,
                                             allocatable=[(n % 2 == 0) == (index == 0) for n in range(len(keys))])
                    stores[node].commit_frame(link_id, 0)
        finally:
            for store in stores.values():
                store.close()
        self.seeded_before = time.time()           # keys created before this are the seeded ones

    def _write_config(self, node: str) -> Path:
        links = []
        for (a, b), link_id in zip(self.links, self.link_ids):
            if node not in (a, b):
                continue
            other = b if node == a else a
            alice_ip = self.addresses[link_id][0]
            channel = (f'peer_listen = "{alice_ip}:{PEER_PORT}"' if node == a
                       else f'peer_addr = "{alice_ip}:{PEER_PORT}"')
            sim = ("[links.sim]\nframe_slots = 1048576\nmax_detections_per_frame = 20000\nclock_hz = 50000.0\n"
                   "realtime = true\n")
            links.append(f'''[[links]]
link_id = "{link_id}"
role = "{'alice' if node == a else 'bob'}"
driver = "{'sim' if self.engines else 'etsi014'}"
{channel}
peer_key_file = "{self.workdir / f'{node}.key'}"
peer_public_key = "{self.workdir / f'{other}.pub'}"
device_addr = "{alice_ip}:{QUANTUM_PORT}"
frames_in_flight = 1
key_bits = {self.key_bits}
{sim if self.engines else ''}''')
        tls = etsi = ""
        if node in self.etsi014:
            kme = self.pki.kmes[f"kme-{node}"]
            tls = (f'[api.tls]\ncert_file = "{kme.cert_file}"\nkey_file = "{kme.key_file}"\n'
                   f'client_ca_file = "{self.pki.ca_cert_file}"\nclient_cert = "optional"\n')
            known = self.etsi014 + self.etsi014_elsewhere
            etsi = f'[etsi014]\nkme_id = "kme-{node}"\n' + "".join(
                f'[[etsi014.saes]]\nsae_id = "sae-{n}"\nkme_id = "kme-{n}"\n' for n in known) + "".join(
                f'[[etsi014.peers]]\nkme_id = "kme-{n}"\nnode = "{n}"\n' for n in known if n != node)
        text = f'''[daemon]
state_dir = "{self.workdir / f'state-{node}'}"
log_level = "info"

[api]
listen = "127.0.0.1:{API_PORT}"
{tls}

[health]
listen = "127.0.0.1:{HEALTH_PORT}"

[node]
id = "{node}"
trust_level = {self.trust.get(node, 100)}

[relay]
announce_interval_s = {self.announce_interval_s}
max_age_s = {max(4 * self.announce_interval_s, 10)}
request_timeout_s = 8

{etsi}
''' + "\n".join(links)
        path = self.workdir / f"{node}.toml"
        path.write_text(text)
        return path

    # -- calls -------------------------------------------------------------------------------------------------
    def call(self, node: str, method: str, path: str, body: dict | None = None, port: int = API_PORT):
        """One HTTP request to `node`'s API (its namespace's loopback), from a thread inside that namespace."""
        return self.call_soon(node, method, path, body, port).result()

    def call_soon(self, node: str, method: str, path: str, body: dict | None = None, port: int = API_PORT):
        """`call` started in the background: a Future of the response."""
        scheme = "https" if node in self.etsi014 and port == API_PORT else "http"

        def go():
            hop(self.netns[node])
            key = f"{node}:{port}:{threading.get_ident()}"       # a client per thread and namespace
            if key not in self._clients:
                verify = ssl.create_default_context(cafile=str(self.pki.ca_cert_file)) if scheme == "https" else False
                self._clients[key] = httpx.Client(timeout=httpx.Timeout(30.0), verify=verify)
            return self._clients[key].request(method, f"{scheme}://127.0.0.1:{port}{path}", json=body)
        return self._pool.submit(go)

    def etsi(self, node: str, path: str, params: dict | None = None, *, sae: str | None = None):
        """An ETSI 014 call to `node`'s KME as its SAE "sae-NODE" (mTLS), or as SAE `sae` (another node's)."""
        sae = sae or f"sae-{node}"

        def go():
            hop(self.netns[node])
            key = f"etsi:{node}:{sae}:{threading.get_ident()}"
            if key not in self._clients:
                context = ssl.create_default_context(cafile=str(self.pki.ca_cert_file))
                issued = self.pki.saes[sae]
                context.load_cert_chain(str(issued.cert_file), str(issued.key_file))
                self._clients[key] = httpx.Client(verify=context, timeout=httpx.Timeout(30.0))
            return self._clients[key].get(f"https://127.0.0.1:{API_PORT}{path}", params=params)
        return self._pool.submit(go).result()

    def routes(self, node: str, dst: str) -> list[dict]:
        response = self.call(node, "GET", f"/v1/relay/routes?dst={dst}")
        return response.json()["routes"] if response.status_code == 200 else []

    def wait_route(self, src: str, dst: str, predicate=lambda route: True, timeout_s: float = 60.0) -> dict:
        found: list[dict] = []

        def ready() -> bool:
            found[:] = [r for r in self.routes(src, dst) if predicate(r)]
            return bool(found)
        wait_for(f"a route {src} -> {dst}", ready, timeout_s=timeout_s, interval_s=0.25)
        return found[0]

    def query(self, node: str, sql: str, *args) -> list[tuple]:
        """Rows of a read-only query on `node`'s key store file (the daemon keeps writing it meanwhile)."""
        import sqlite3
        path = self.workdir / f"state-{node}" / KEYSTORE_FILE
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            return db.execute(sql, args).fetchall()

    def _classical_filters(self, link_id: str) -> list[tuple[str, list[str]]]:
        """(namespace, iptables rule) at both ends of `link_id` that drop its classical channel's packets
        (TCP to and from the peer port) as they come in; the quantum channel's port is left alone."""
        a, b = self.links[self.link_ids.index(link_id)]
        if_a, if_b = self._ifs[link_id]
        return [(self.netns[a], ["INPUT", "-i", if_a, "-p", "tcp", "--dport", str(PEER_PORT), "-j", "DROP"]),
                (self.netns[b], ["INPUT", "-i", if_b, "-p", "tcp", "--sport", str(PEER_PORT), "-j", "DROP"])]

    def cut(self, link_id: str) -> None:
        """Cut `link_id`'s classical channel (silently: packets dropped, both daemons keep running)."""
        for netns, rule in self._classical_filters(link_id):
            run("ip", "netns", "exec", netns, "iptables", "-A", *rule)

    def mend(self, link_id: str) -> None:
        """Undo `cut`."""
        for netns, rule in self._classical_filters(link_id):
            run("ip", "netns", "exec", netns, "iptables", "-D", *rule, check=False)

    def kill(self, node: str) -> None:
        self.daemons[node].stop(signal.SIGKILL)

    def metrics(self, node: str) -> str:
        return self.call(node, "GET", "/metrics", port=HEALTH_PORT).text

    def logs(self) -> dict[str, str]:
        return {node: daemon.log() for node, daemon in self.daemons.items()}

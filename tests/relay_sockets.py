"""Relay nodes as the daemon builds them, in this process: each node's RelayService on its links' LinkChannels
(with the key-store resynchronisation as every session's preparer, as the link engine registers it), real
authenticated TCP/TLS sessions on 127.0.0.1, and one SQLite key store file per node, seeded with the same
keys at both ends of each link (each end's share alternating, as tests/relay_lab.py seeds them).

`crash(name)` stops a node at once, as kill -9 does to a daemon: its whole scope is cancelled, so nothing
more leaves it and no more is written (a key-store transaction under way in its worker thread still
finishes, as one the kernel had flushed); the in-memory state is dropped. `start(name)` brings it back on
the same files, identity and ports, with new objects. No namespaces, no root: the real-daemon version of
these paths is tests/test_relay_netns.py.
"""
from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import trio
from prometheus_client import CollectorRegistry

from qkdd.keystore import KeyState, KeyStore, create_kek
from qkdd.link.inventory import resynchronise
from qkdd.link_channel import INVENTORY_CHANNEL, LinkChannel
from qkdd.metrics import RelayMetrics
from qkdd.peer import PeerSettings, generate_identity
from qkdd.relay.service import RelayService, RelaySettings

KEY_BITS = 256
SEEDED_EXPIRY_S = 86400.0
TEST_SETTINGS = {"announce_interval_s": 1.0, "max_age_s": 10.0, "request_timeout_s": 3.0,
                 "max_announcements_per_s": 4.0}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SocketNode:
    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.identity = generate_identity()
        self.store_path = str(workdir / f"{name}.sqlite")
        self.kek = create_kek(str(workdir / f"{name}.kek"))
        self.store: KeyStore | None = None
        self.service: RelayService | None = None
        self.channels: dict[str, LinkChannel] = {}
        self.registry: CollectorRegistry | None = None
        self.nursery: trio.Nursery | None = None
        self.stopped = trio.Event()
        self.results: list = []           # outcomes of calls run in the node (call_soon)

    def open_store(self) -> KeyStore:
        return KeyStore(self.store_path, self.kek)

    def metric(self, name: str, **labels) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0 if self.registry else 0.0

    def call_soon(self, fn, *args) -> None:
        """`await fn(*args)` as a task of the node (a request handler of the daemon): its result or
        exception lands in `results`; it dies with the node."""
        async def run() -> None:
            try:
                self.results.append(await fn(*args))
            except Exception as exc:       # noqa: BLE001 - recorded for the test
                self.results.append(exc)
        self.nursery.start_soon(run)


class SocketNet:
    def __init__(self, workdir: Path, nodes: list[str], links: list[tuple[str, str]], *, keys_per_link: int = 64,
                 keys_on: dict[str, int] | None = None, **settings) -> None:
        """`keys_on`: link id -> keys seeded on it, for links that hold other than `keys_per_link`."""
        self.nodes = {name: SocketNode(name, workdir) for name in nodes}
        self.links = {f"{a}-{b}": (a, b) for a, b in links}
        self.ports = {link_id: free_port() for link_id in self.links}
        self.settings = {**TEST_SETTINGS, **settings}
        self.seeded: dict[str, list[str]] = {}
        for link_id, (a, b) in self.links.items():
            count = (keys_on or {}).get(link_id, keys_per_link)
            keys = [(str(uuid.uuid4()), os.urandom(KEY_BITS // 8)) for _ in range(count)]
            self.seeded[link_id] = [key_id for key_id, _ in keys]
            for index, name in enumerate((a, b)):
                store = self.nodes[name].open_store()
                try:
                    store.put_pending(link_id, 0, keys, expires_at=time.time() + SEEDED_EXPIRY_S,
                                      allocatable=[(n % 2 == 0) == (index == 0) for n in range(len(keys))])
                    store.commit_frame(link_id, 0)
                finally:
                    store.close()

    def __getitem__(self, name: str) -> SocketNode:
        return self.nodes[name]

    def service(self, name: str) -> RelayService:
        return self.nodes[name].service

    async def start(self, name: str, nursery: trio.Nursery, *, before_run=None) -> SocketNode:
        """Build the node as the daemon does and run it; `before_run(node)` may wrap its parts first."""
        node = self.nodes[name]
        node.stopped = trio.Event()
        node.store = node.open_store()
        node.channels = {}
        for link_id, (a, b) in self.links.items():
            if name not in (a, b):
                continue
            other = self.nodes[b if name == a else a]
            address = ("127.0.0.1", self.ports[link_id])
            settings = (PeerSettings(link_id, listen=address, backoff_initial_s=0.05, backoff_max_s=0.2) if name == a
                        else PeerSettings(link_id, dial=address, backoff_initial_s=0.05, backoff_max_s=0.2))
            channel = LinkChannel(link_id, settings, node.identity, other.identity.public_key())
            channel.prepare_with(INVENTORY_CHANNEL, lambda stream, link_id=link_id, store=node.store:
                                 resynchronise(link_id, store, stream))
            node.channels[link_id] = channel
        node.registry = CollectorRegistry()
        node.service = RelayService(RelaySettings(name, **self.settings), node.identity, node.channels, node.store,
                                    metrics=RelayMetrics(node.registry))
        if before_run is not None:
            before_run(node)
        await nursery.start(self._run_node, node)
        return node

    async def _run_node(self, node: SocketNode, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as inner:
                node.nursery = inner
                for channel in node.channels.values():
                    await inner.start(channel.run)
                await inner.start(node.service.run)
                task_status.started()
        finally:
            node.store.close()
            node.stopped.set()

    def crash(self, name: str) -> None:
        """As kill -9: the node stops at its next checkpoint; nothing more is sent or written."""
        self.nodes[name].nursery.cancel_scope.cancel()

    async def stop(self, name: str) -> None:
        self.crash(name)
        await self.nodes[name].stopped.wait()

    async def wait_for(self, what: str, predicate, timeout_s: float = 20.0) -> None:
        """Poll `predicate()` every 20 ms; AssertionError naming `what` after `timeout_s` (an upper bound
        for a loaded machine, not a timing assertion)."""
        with trio.move_on_after(timeout_s):
            while not predicate():
                await trio.sleep(0.02)
            return
        raise AssertionError(f"timed out waiting for {what}")

    async def wait_route(self, src: str, dst: str, hops: int | None = None) -> None:
        await self.wait_for(f"a route {src} -> {dst}", lambda: any(
            hops is None or r.hops == hops for r in self.service(src).routes(dst)))

    def held(self, name: str, link_id: str, store: KeyStore | None = None) -> set[str]:
        """Key ids of `link_id` that hold material at `name` (pending, available or reserved)."""
        store = store or self.nodes[name].store
        return {k for k, state in store.inventory(link_id).items() if state.holds_material}

    def unmatched_link_keys(self) -> dict[str, set[str]]:
        """Per link, the keys held at one end only (the other consumed or never had them)."""
        out = {}
        for link_id, (a, b) in self.links.items():
            diff = self.held(a, link_id) ^ self.held(b, link_id)
            if diff:
                out[link_id] = diff
        return out


def capture_streams(channel: LinkChannel, streams: dict) -> None:
    """Fill `streams` with the MuxStream of each channel kind of `channel`'s sessions, by channel number,
    as each session runs (so a test can write raw records on the real session beside the handler)."""
    for number, handler in list(channel._handlers.items()):
        async def wrapped(stream, handler=handler, number=number):
            streams[number] = stream
            await handler(stream)
        channel._handlers[number] = wrapped


def state_of(store: KeyStore, link_id: str, key_id: str) -> KeyState | None:
    from qkdd.keystore import KeyNotFound
    try:
        return store.state(link_id, key_id)
    except KeyNotFound:
        return None
